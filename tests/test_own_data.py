"""Your own domains: a labelled pairs folder of your own classes as the source (or val, or an oracle's
data), any folder of photos as the target, and every command from prepare-data to predict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _fixtures_own import FIVE_CLASSES, scene_values, write_class_list, write_pairs, write_photos
from PIL import Image

from cicld.data.datasets import SourceDataset, TargetDataset
from cicld.data.labels import ClassList
from cicld.data.pngio import read_image, write_image, write_png16
from cicld.data.prepare import find_frames, prepare_dataset
from cicld.errors import DataError
from cicld.training.runs import stage_runs

CLASSES = ClassList.from_dict(FIVE_CLASSES)


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# ---------------------------------------------------------------- the class list
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c["classes"][3].update(values=[4]), "label value 4 is listed for both 'road' and 'car'"),
        (lambda c: c["classes"][1].update(values=[0]), "label value 0 is listed for 'tree' and is also the 'ignore'"),
        (lambda c: c["classes"][4].update(name="sky"), "class name 'sky' is listed twice"),
        (
            lambda c: c["classes"][1].update(color=[70, 130, 180]),
            "colour [70, 130, 180] is listed for both 'sky' and 'tree'",
        ),
        (lambda c: c["classes"][0].update(colour=[1, 2, 3]), "class 0 has unknown keys 'colour'"),
    ],
)
def test_a_class_list_with_a_value_name_or_colour_listed_twice_is_one_line_naming_the_file(
    cli, tmp_path, change, message
):
    data = json.loads(json.dumps(FIVE_CLASSES))
    change(data)
    classes = write_class_list(tmp_path / "my classes.json", data)
    mine = write_pairs(tmp_path / "mine", [(32, 16)])
    line = one_line_error(cli("prepare-data", "pairs", mine, "--classes", classes))
    assert line.startswith(f"error: class list {classes}: {message}")
    assert not (mine / "classes.json").exists()


def test_a_class_list_reads_back_as_it_was_written_and_cityscapes_is_the_default():
    from cicld.data.labels import CITYSCAPES
    from cicld.models import CICLDConfig

    assert ClassList.from_dict(CLASSES.to_dict()) == CLASSES and len(CLASSES) == 5
    assert CICLDConfig().class_list == CITYSCAPES and CITYSCAPES.is_cityscapes and not CLASSES.is_cityscapes
    unnumbered = ClassList.from_dict({"classes": [{"name": "x", "color": [1] * 3}, {"name": "y", "color": [2] * 3}]})
    assert unnumbered.values == ((0,), (1,))  # no values: each class's position


# ---------------------------------------------------------------- prepare-data pairs
def test_pairs_labels_of_values_palettes_16_bits_or_colours_become_the_class_lists_train_ids(tmp_path):
    values = scene_values(32, 16, seed=0)  # 0 (ignore), 1..6
    expected = CLASSES.to_train_ids(values)
    root = write_pairs(tmp_path / "mine", [(32, 16)] * 4)
    labels = root / "labels"
    inverted = [255 - v for v in range(256) for _ in range(3)]
    write_image(labels / "frame1.png", values, palette=inverted)  # the palette indices are the values
    write_png16(labels / "frame2.png", values.astype(np.uint16))
    with_ignore = {**FIVE_CLASSES, "ignore_color": [0, 0, 0]}
    colours = ClassList.from_dict(with_ignore).colorize(expected)
    Image.fromarray(colours).save(labels / "frame3.png")  # a colour label: the class colours, ignore black

    report = prepare_dataset(find_frames(root, "pairs", ClassList.from_dict(with_ignore)))
    assert (report.converted, report.failures) == (4, [])
    for stem in ("sub/frame0", "frame1", "frame2", "frame3"):
        np.testing.assert_array_equal(read_image(labels / f"{stem}_labelTrainIds.png"), expected)
    assert set(np.unique(expected)) == {0, 1, 2, 3, 4, 255}  # road's two values are one class, 0 is ignored
    stats = json.loads((root / "sample_class_stats.json").read_text())
    assert {entry["file"] for entry in stats} == {
        f"labels/{s}_labelTrainIds.png" for s in ("sub/frame0", "frame1", "frame2", "frame3")
    }
    assert ClassList.read(root / "classes.json") == ClassList.from_dict(with_ignore)
    assert SourceDataset(root, "pairs").classes.names == ("sky", "tree", "road", "car", "person")


@pytest.mark.parametrize("kind", ["value", "colour", "jpeg"])
def test_a_label_the_class_list_cannot_read_is_one_line_naming_the_file(cli, tmp_path, kind):
    root = write_pairs(tmp_path / "mine", [(32, 16), (32, 16)])
    label = root / "labels" / "frame1.png"
    values = scene_values(32, 16, seed=1)
    if kind == "value":
        values[0, :3] = 9  # no class has 9
        Image.fromarray(values).save(label)
        reason = f"{label} has label values 9 that no class of the class list has (ignore: 0)"
    elif kind == "colour":
        Image.fromarray(CLASSES.colorize(CLASSES.to_train_ids(values))).save(label)  # black (ignore) is no class colour
        reason = f"{label} has colours [0, 0, 0] that no class of the class list has (ignore_color: none)"
    else:
        label.unlink()
        Image.fromarray(values).save(label.with_suffix(".jpg"))
        reason = f"{label.with_suffix('.jpg')} is a JPEG file, not a PNG"
    classes = write_class_list(tmp_path / "classes.json")
    line = one_line_error(cli("prepare-data", "pairs", root, "--classes", classes))
    assert reason in line and line.startswith("error: 1 of 2 pairs frames could not be prepared")
    assert not (root / "sample_class_stats.json").exists()  # not prepared: training refuses it


def test_preparing_a_pairs_folder_resumes_and_refuses_another_class_list(cli, tmp_path):
    root = write_pairs(tmp_path / "mine", [(32, 16), (48, 16), (32, 24)])
    classes = write_class_list(tmp_path / "classes.json")
    assert cli("prepare-data", "pairs", root, "--classes", classes).exit_code == 0
    stats = (root / "sample_class_stats.json").read_bytes()
    (root / "labels" / "frame1_labelTrainIds.png").unlink()  # what a run killed half-way leaves
    (root / "sample_class_stats.json").unlink()
    assert cli("prepare-data", "pairs", root, "--classes", classes).exit_code == 0
    assert (root / "sample_class_stats.json").read_bytes() == stats
    other = write_class_list(tmp_path / "other.json", {"classes": FIVE_CLASSES["classes"][:4], "ignore": 0})
    line = one_line_error(cli("prepare-data", "pairs", root, "--classes", other))
    assert f"{root} was prepared with another class list ({root / 'classes.json'})" in line
    assert one_line_error(cli("prepare-data", "pairs", root)).endswith(
        "needs the class list: --classes FILE (docs/own-data.md)"
    )


def test_a_pairs_label_not_the_size_of_its_image_is_resized_or_its_frame_left_out(tmp_path):
    from cicld.data.prepare import SizeMismatchPolicy

    root = write_pairs(tmp_path / "mine", [(32, 16), (32, 16)])
    Image.fromarray(scene_values(16, 8, seed=1)).save(root / "labels" / "frame1.png")  # half its image's size
    skipped = prepare_dataset(find_frames(root, "pairs", CLASSES), policy=SizeMismatchPolicy.skip)
    assert (skipped.converted, skipped.mismatch_skipped) == (1, 1)
    assert json.loads((root / "skipped_frames.json").read_text()) == ["frame1"]
    resized = prepare_dataset(find_frames(root, "pairs", CLASSES))
    assert (resized.converted, resized.size_mismatched) == (1, 1)
    assert read_image(root / "labels" / "frame1_labelTrainIds.png").shape == (16, 32)


# ---------------------------------------------------------------- a folder of photos as the target
def test_any_folder_of_photos_is_a_target_whatever_its_subfolders_formats_colours_and_sizes(tmp_path):
    photos = write_photos(tmp_path / "photos")
    target = TargetDataset(tmp_path / "photos", layout="images", resize=(64, 32), crop=(32, 32), seed=0)
    assert [s.image for s in target.samples] == sorted(photos)  # every image below it, notes.txt left out
    assert {Image.open(p).mode for p in photos} == {"RGB", "L"} and len({Image.open(p).size for p in photos}) == 6
    for index in range(len(target)):
        assert target[index]["image"].shape == (3, 32, 32)
    target.require_batchable()  # resized: batches stack


def test_a_target_folder_is_told_apart_by_what_is_there_and_a_pairs_target_gives_every_image(toy_root, tmp_path):
    from cicld.data.layouts import target_layout

    root = write_pairs(tmp_path / "mine", [(32, 16)] * 3)
    (root / "labels" / "frame2.png").unlink()  # a target's images need no label
    assert [s.name for s in TargetDataset(root, layout="pairs").samples] == ["frame1", "frame2", "sub/frame0"]
    assert target_layout(root) == "pairs" and target_layout(root / "images") == "images"
    assert target_layout(toy_root / "cityscapes") == "cityscapes"


def test_whole_images_of_mixed_sizes_are_one_line_asking_for_a_resize_or_a_crop(cli, tmp_path):
    write_photos(tmp_path / "photos")
    target = TargetDataset(tmp_path / "photos", layout="images")
    with pytest.raises(
        DataError, match=r"differ in size .* resize them \(--source-resize/--target-resize WIDTHxHEIGHT\) or crop"
    ):
        target.require_batchable()


def test_an_empty_target_folder_is_one_line_naming_it_before_anything_is_created(cli, own, tmp_path):
    empty = tmp_path / "photos"
    (empty / "day").mkdir(parents=True)
    (empty / "day" / "notes.txt").write_text("no image here")
    result = cli("pretrain-ae", *own.flags(tmp_path / "runs"), "--target-root", empty, "--preset", "tiny")
    assert one_line_error(result) == f"error: {empty} has no images (PNG, JPEG... searched in every subfolder)"
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- prepare-data -> ... -> predict
class OwnData:
    """A 5-class pairs source, labelled val frames and a folder of photos, with pretrain-ae and
    pretrain-ldm trained on them through the command line (tiny model, two steps)."""

    def __init__(self, root: Path):
        self.root = root
        self.classes = write_class_list(root / "classes.json")
        self.mine = write_pairs(root / "data" / "mine", [(64, 32), (80, 40), (64, 48), (96, 48)])
        self.val = write_pairs(root / "data" / "mine-val", [(64, 32), (80, 48)], seed=50)
        self.photos = root / "photos"
        write_photos(self.photos)
        self.runs = root / "runs"

    def flags(self, runs: Path | None = None) -> list:
        return [
            "--source",
            "pairs",
            "--source-root",
            self.mine,
            "--target-root",
            self.photos,
            "--runs-root",
            runs or self.runs,
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--crop",
            "32x32",
            "--source-resize",
            "64x32",
            "--target-resize",
            "64x32",
            "--num-workers",
            "0",
            "--checkpoint-every",
            "2",
            "--warmup-steps",
            "1",
            "--val-limit",
            "2",
        ]


def _main(*args) -> None:
    from cicld.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    assert exit_info.value.code == 0


@pytest.fixture(scope="module")
def own(tmp_path_factory, single_thread) -> OwnData:
    data = OwnData(tmp_path_factory.mktemp("own"))
    for folder in (data.mine, data.val):
        _main("prepare-data", "pairs", folder, "--classes", data.classes)
    _main("pretrain-ae", *data.flags(), "--preset", "tiny", "--backbone", "none")  # tests never download
    _main("pretrain-ldm", *data.flags())
    return data


def test_your_classes_go_from_prepare_data_through_adapt_to_predictions_in_their_colours_and_ids(cli, own, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(own.runs, runs, symlinks=True)
    unvalidated = cli("adapt", *own.flags(runs))
    assert unvalidated.exit_code == 0, unvalidated.stderr
    assert (
        " ".join(unvalidated.stdout.split()).count(
            f"note: not validated: no labelled frames of the target {own.photos}"
        )
        == 1
    )
    validated = cli("adapt", *own.flags(runs), "--val-root", own.val, "--classes", own.classes)
    assert validated.exit_code == 0, validated.stderr
    assert "target val mIoU " in validated.stdout and "not validated" not in validated.stdout

    run, unvalidated_run = stage_runs(runs, "adapt")  # newest first: validated on data/mine-val, with --classes
    for recorded in (run, unvalidated_run):  # the class list itself, given or read from the prepared source
        assert json.loads((recorded / "config.json").read_text())["classes"] == CLASSES.to_dict()
    model = tmp_path / "model"  # the model folder alone, away from its run
    shutil.copytree(run / "final", model)
    saved = json.loads((model / "config.json").read_text())
    assert saved["num_classes"] == 5 and ClassList.from_dict(saved["classes"]) == CLASSES

    scored = cli(
        "evaluate", model, "--data", own.val, "--json", tmp_path / "scores.json", "--out", tmp_path / "pictures"
    )
    assert scored.exit_code == 0, scored.stderr
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["dataset"] == "pairs" and list(scores["per_class_iou"]) == list(CLASSES.names)
    assert "mIoU" in scores and "mIoU19" not in scores and "mIoU16" not in scores
    assert all(name in scored.stdout for name in CLASSES.names)
    assert (tmp_path / "pictures" / "iou.png").is_file() and (tmp_path / "pictures" / "confusion.png").is_file()

    predicted = cli("predict", own.photos, tmp_path / "out", "--checkpoint", model)
    assert predicted.exit_code == 0, predicted.stderr
    for photo in ("a.jpg", "day/c.jpeg", "night/e.png"):
        stem = tmp_path / "out" / Path(photo).with_suffix("")
        train_ids = read_image(f"{stem}_trainIds.png")
        assert train_ids.shape == read_image(own.photos / photo).shape[:2] and set(np.unique(train_ids)) <= set(
            range(5)
        )
        np.testing.assert_array_equal(read_image(f"{stem}_labelIds.png"), CLASSES.to_raw_ids(train_ids))
        np.testing.assert_array_equal(read_image(f"{stem}_color.png"), CLASSES.colorize(train_ids))
        assert {tuple(c) for c in read_image(f"{stem}_color.png").reshape(-1, 3)} <= set(CLASSES.colors)
        assert set(np.unique(read_image(f"{stem}_labelIds.png"))) <= {1, 2, 3, 5, 6}  # each class's first value


def test_the_oracle_trains_on_a_prepared_pairs_folder_as_its_target(cli, own, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(own.runs, runs, symlinks=True)
    result = cli("adapt", *own.flags(runs), "--target-root", own.val, "--method", "oracle")
    assert result.exit_code == 0, result.stderr
    assert f"--method oracle trained on the target's own labels ({own.val})" in " ".join(result.stdout.split())


def test_a_model_of_other_classes_than_the_data_is_one_line_in_training_and_in_evaluate(
    cli, own, toy_root, pretrained_runs, tmp_path
):
    (pairs_model,) = stage_runs(own.runs, "pretrain-ldm")
    result = cli("evaluate", pairs_model, "--data", toy_root / "cityscapes")
    assert one_line_error(result) == (
        f"error: the labels of {toy_root / 'cityscapes'} name 19 classes "
        "(road, sidewalk, building, wall, fence, pole, …) "
        "and the model 5 (sky, tree, road, car, person): score a model on data labelled with its own classes"
    )
    (toy_ae,) = stage_runs(pretrained_runs, "pretrain-ae")  # Cityscapes' 19 classes
    result = cli("pretrain-ldm", *own.flags(tmp_path / "runs"), "--init-from", toy_ae)
    assert one_line_error(result).startswith(
        "error: the data's labels name 5 classes (sky, tree, road, car, person) and "
        f"the starting model {toy_ae / 'final'} 19 (road, sidewalk,"
    )
    assert not (tmp_path / "runs").exists()


def test_a_val_folder_of_other_classes_than_the_source_is_one_line(cli, own, tmp_path):
    val = write_pairs(tmp_path / "val", [(64, 32), (64, 32)])
    four = write_class_list(
        tmp_path / "four.json",
        {
            **FIVE_CLASSES,
            "classes": FIVE_CLASSES["classes"][:3] + [{"name": "vehicle", "color": [0, 0, 142], "values": [5, 6]}],
        },
    )
    assert cli("prepare-data", "pairs", val, "--classes", four).exit_code == 0
    result = cli("pretrain-ldm", *own.flags(tmp_path / "runs"), "--val-root", val)
    assert one_line_error(result) == (
        f"error: the training labels name 5 classes (sky, tree, road, car, person) and the val labels of {val} 4 "
        "(sky, tree, road, vehicle); prepare them with the same class names, in the same order (docs/own-data.md)"
    )
    result = cli("pretrain-ldm", *own.flags(tmp_path / "runs"), "--classes", four)
    assert "and --classes 4 (sky, tree, road, vehicle)" in one_line_error(result)
    assert not (tmp_path / "runs").exists()
