"""The pictures: a score's confusion matrix and IoU bars say what the numbers say, with names and
values; a run's curves are its log.csv."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from cicld.evaluation.metrics import SegmentationScores
from cicld.evaluation.plots import (
    confusion_figure,
    confusion_matrix_png,
    iou_bar_chart_png,
    iou_figure,
    read_log,
    training_curves_figure,
    training_curves_png,
)


def _scores() -> SegmentationScores:
    confusion = np.zeros((19, 19), dtype=np.int64)
    confusion[0, 0], confusion[0, 1] = 30, 10  # road: 30 right, 10 taken for sidewalk
    confusion[1, 1] = 20  # sidewalk: all right
    return SegmentationScores.from_confusion(confusion)


def test_the_confusion_matrix_shows_row_shares_under_class_names_with_a_colour_bar():
    figure = confusion_figure(_scores())
    axes, colour_bar = figure.axes
    shown = axes.get_images()[0].get_array()
    assert shown[0, 0] == 0.75 and shown[0, 1] == 0.25 and shown[1, 1] == 1.0  # each row sums to 1
    assert [label.get_text() for label in axes.get_yticklabels()][:2] == ["road", "sidewalk"]
    assert [label.get_text() for label in axes.get_xticklabels()][-1] == "bicycle"
    assert "share" in colour_bar.get_ylabel()
    assert {"75", "100"} <= {text.get_text() for text in axes.texts}  # the diagonal, in %


def test_the_iou_bars_carry_each_class_value_and_the_means_and_mark_absent_classes():
    scores = _scores()
    axes = iou_figure(scores).axes[0]
    values = {text.get_text() for text in axes.texts}
    road, sidewalk = scores.per_class_iou[:2]
    assert {f"{100 * road:.1f}", f"{100 * sidewalk:.1f}", "n/a"} <= values
    assert [bar.get_width() for bar in axes.patches][:2] == [100 * road, 100 * sidewalk]
    assert f"mIoU19 {100 * scores.miou19:.1f}" in axes.get_title()


def test_the_pictures_are_written_as_png(tmp_path):
    for draw, name in ((confusion_matrix_png, "confusion.png"), (iou_bar_chart_png, "iou.png")):
        assert draw(_scores(), tmp_path / name) == tmp_path / name
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.size[0] > 300


LOG = """step,ce_source,diffusion,lr
1,2.5,0.9,1e-05
2,2.0,nan,2e-05
3,1.5,0.8,3e-05
"""
VALIDATED = LOG.replace("diffusion,lr", "diffusion,lr,val_miou") + "4,1.2,0.7,4e-05,0.25\n"


def test_a_runs_log_becomes_its_curves_losses_learning_rate_and_validation(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text(VALIDATED)
    columns = read_log(log)
    assert columns["diffusion"] == [(1, 0.9), (3, 0.8), (4, 0.7)]  # the NaN left out
    assert columns["val_miou"] == [(4, 0.25)]  # only where it validated
    figure = training_curves_figure(columns, "adapt toy-1")
    losses, lr, val = figure.axes
    assert [line.get_label() for line in losses.get_lines()] == ["ce_source", "diffusion"]
    assert list(lr.get_lines()[0].get_ydata()) == [1e-05, 2e-05, 3e-05, 4e-05]
    assert list(val.get_lines()[0].get_ydata()) == [25.0]  # in %
    assert training_curves_png(log, tmp_path / "curves.png") == tmp_path / "curves.png"
    assert Image.open(tmp_path / "curves.png").format == "PNG"


def test_a_log_without_validation_has_no_validation_panel_and_an_empty_log_no_picture(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text(LOG)
    assert len(training_curves_figure(read_log(log)).axes) == 2
    log.write_text("step,ce_source\n")
    assert training_curves_png(log, tmp_path / "curves.png") is None
    assert not (tmp_path / "curves.png").exists()
    assert not any(math.isnan(v) for _, v in read_log(tmp_path / "log.csv").get("ce_source", []))
