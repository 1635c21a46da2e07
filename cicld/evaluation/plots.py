"""Pictures: a score's confusion matrix and per-class IoU bars, a run's training curves, and a
grid of images side by side.

The charts are drawn with matplotlib (axes, class names, values, a colour bar), on a bare
``Figure`` with the Agg canvas: no pyplot, so no global state and no display needed. The grid
of images is plain Pillow.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cicld.evaluation.metrics import SegmentationScores
from cicld.files import atomic_write

_FONT = ImageFont.load_default()


def _save(image: Image.Image, path: Path) -> Path:
    atomic_write(path, lambda handle: image.save(handle, format="PNG"))
    return Path(path)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save_figure(figure, path: Path) -> Path:
    atomic_write(path, lambda handle: figure.savefig(handle, format="png"))
    return Path(path)


def _rgb(color) -> tuple[float, float, float]:
    return tuple(channel / 255 for channel in color)


def confusion_matrix_png(scores: SegmentationScores, path: Path) -> Path:
    """:func:`confusion_figure` as a PNG at ``path``."""
    return _save_figure(confusion_figure(scores), path)


def confusion_figure(scores: SegmentationScores):
    """Rows: ground truth, columns: prediction, each row normalised to 1 (the share of a class's
    pixels predicted as each class), with the class names, their colours and a colour bar."""
    confusion = scores.confusion
    rows = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    names, colors = scores.classes.names, scores.classes.colors
    k = len(names)
    side = 2.5 + 0.32 * k
    figure = _figure(side + 1.2, side)
    axes = figure.add_subplot()
    shown = axes.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(k), names, rotation=90, fontsize=8)
    axes.set_yticks(range(k), names, fontsize=8)
    for ticks in (axes.get_xticklabels(), axes.get_yticklabels()):
        for label, color in zip(ticks, colors):
            label.set_bbox({"facecolor": _rgb(color), "edgecolor": "none", "alpha": 0.35, "pad": 1})
    if k <= 25:  # the diagonal's values: each class's recall
        for i in range(k):
            axes.text(i, i, f"{100 * rows[i, i]:.0f}", ha="center", va="center", fontsize=6,
                      color="white" if rows[i, i] > 0.5 else "black")  # fmt: skip
    axes.set_xlabel("predicted class")
    axes.set_ylabel("ground-truth class")
    axes.set_title("confusion (each row sums to 1)")
    figure.colorbar(shown, ax=axes, shrink=0.8, label="share of the row's pixels")
    return figure


def iou_bar_chart_png(scores: SegmentationScores, path: Path, title: str = "per-class IoU") -> Path:
    """:func:`iou_figure` as a PNG at ``path``."""
    return _save_figure(iou_figure(scores, title), path)


def iou_figure(scores: SegmentationScores, title: str = "per-class IoU"):
    """One bar per class in its colour with its IoU written on it; classes without an IoU (no
    pixel in truth or prediction) are marked n/a. The means are in the title."""
    names, colors = scores.classes.names, scores.classes.colors
    ious = np.asarray(scores.per_class_iou, dtype=float)
    k = len(names)
    figure = _figure(7.0, 1.2 + 0.28 * k)
    axes = figure.add_subplot()
    positions = np.arange(k)
    values = np.nan_to_num(100 * ious, nan=0.0)
    axes.barh(positions, values, color=[_rgb(c) for c in colors], edgecolor="black", linewidth=0.5)
    for y, (value, iou) in enumerate(zip(values, ious)):
        axes.text(value + 1, y, "n/a" if math.isnan(iou) else f"{value:.1f}", va="center", fontsize=8)
    axes.set_yticks(positions, names, fontsize=8)
    axes.invert_yaxis()  # the first class on top
    axes.set_xlim(0, 110)
    axes.set_xlabel("IoU (%)")
    means = ", ".join(f"{name} {100 * value:.1f}" for name, value in scores.means().items())
    axes.set_title(f"{title}: {means}", fontsize=10)
    axes.grid(axis="x", alpha=0.3)
    return figure


def training_curves_png(log_csv: Path, path: Path, title: str = "") -> Path | None:
    """:func:`training_curves_figure` of a run's ``log.csv`` as a PNG at ``path``; None (nothing
    written) for a log without values."""
    columns = read_log(log_csv)
    return _save_figure(training_curves_figure(columns, title), path) if columns else None


def read_log(log_csv: Path) -> dict[str, list[tuple[int, float]]]:
    """Each column of a run's ``log.csv`` as (step, value) pairs, its empty and non-finite cells left out."""
    columns: dict[str, list[tuple[int, float]]] = {}
    with Path(log_csv).open(newline="") as handle:
        for row in csv.DictReader(handle):
            step = int(float(row["step"]))
            for key, text in row.items():
                if key != "step" and text not in (None, "") and math.isfinite(value := float(text)):
                    columns.setdefault(key, []).append((step, value))
    return columns


def training_curves_figure(columns: dict[str, list[tuple[int, float]]], title: str = ""):
    """A run's log as pictures against the step, one panel each: every loss (log scale where all
    are positive), the learning rate, and the validation mIoU (in %) where the run validated."""
    panels = [
        ("losses", [key for key in columns if key not in ("lr", "val_miou")]),
        ("learning rate", [key for key in ("lr",) if key in columns]),
        ("target val mIoU (%)", [key for key in ("val_miou",) if key in columns]),
    ]
    panels = [(name, keys) for name, keys in panels if keys]
    figure = _figure(7.0, 1.0 + 2.2 * len(panels))
    axes_list = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for axes, (name, keys) in zip(axes_list, panels):
        for key in keys:
            steps, values = zip(*columns[key])
            values = np.asarray(values) * (100 if key == "val_miou" else 1)
            style = {"marker": "o"} if key == "val_miou" or len(steps) < 3 else {}
            axes.plot(steps, values, label=key, linewidth=1, **style)
        axes.set_ylabel(name)
        axes.grid(alpha=0.3)
        if name == "losses":
            axes.legend(fontsize=7, ncol=3)
            if all(value > 0 for key in keys for _, value in columns[key]):
                axes.set_yscale("log")
        if name == "learning rate":
            axes.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    axes_list[-1].set_xlabel("step")
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def side_by_side_png(rows: list[list[np.ndarray]], titles: list[str], path: Path, gap: int = 4) -> Path:
    """A grid of equally sized RGB pictures, one title per column (e.g. input | truth | predictions)."""
    if not rows or any(len(row) != len(titles) for row in rows):
        raise ValueError(f"every row needs one picture per title ({len(titles)})")
    height, width = rows[0][0].shape[:2]
    if any(picture.shape != (height, width, 3) for row in rows for picture in row):
        raise ValueError("all pictures must be RGB arrays of the same size")
    header = 18
    columns = len(titles)
    image = Image.new(
        "RGB", (columns * width + (columns - 1) * gap, header + len(rows) * (height + gap) - gap), "white"
    )
    draw = ImageDraw.Draw(image)
    for j, title in enumerate(titles):
        draw.text((j * (width + gap) + 2, 3), title, fill="black", font=_FONT)
    for i, row in enumerate(rows):
        for j, picture in enumerate(row):
            image.paste(
                Image.fromarray(np.ascontiguousarray(picture, dtype=np.uint8)),
                (j * (width + gap), header + i * (height + gap)),
            )
    return _save(image, path)
