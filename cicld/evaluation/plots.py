"""Pictures of a score: the row-normalised confusion matrix and a per-class IoU bar chart.

Drawn with Pillow alone (no plotting library to install), in the class colours of the scores'
class list (Cityscapes' by default).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cicld.evaluation.metrics import SegmentationScores
from cicld.files import atomic_write

_FONT = ImageFont.load_default()
_CELL = 22
_LABEL_WIDTH = 100


def _save(image: Image.Image, path: Path) -> Path:
    atomic_write(path, lambda handle: image.save(handle, format="PNG"))
    return Path(path)


def confusion_matrix_png(scores: SegmentationScores, path: Path) -> Path:
    """Rows = ground truth, columns = prediction, each row normalised to 1 (white 0 -> dark blue 1)."""
    confusion = scores.confusion
    rows = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    names, colors = scores.classes.names, scores.classes.colors
    k = len(names)
    size = _LABEL_WIDTH + k * _CELL + 10
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    for i in range(k):
        y = _LABEL_WIDTH + i * _CELL
        draw.text((4, y + 6), names[i][:14], fill="black", font=_FONT)
        for j in range(k):
            x = _LABEL_WIDTH + j * _CELL
            shade = int(255 * (1 - rows[i, j]))
            draw.rectangle([x, y, x + _CELL - 1, y + _CELL - 1], fill=(shade, shade, 255 - (255 - shade) // 3))
        swatch = [_LABEL_WIDTH + i * _CELL + 6, _LABEL_WIDTH - 14, _LABEL_WIDTH + i * _CELL + 15, _LABEL_WIDTH - 5]
        draw.rectangle(swatch, fill=colors[i])
    draw.text((_LABEL_WIDTH, 8), "confusion (rows: ground truth, columns: prediction)", fill="black", font=_FONT)
    draw.text((_LABEL_WIDTH, 24), "column swatches: predicted class colours", fill="gray", font=_FONT)
    return _save(image, path)


def iou_bar_chart_png(scores: SegmentationScores, path: Path, title: str = "per-class IoU") -> Path:
    """One bar per class in its colour; classes without an IoU are marked n/a."""
    names, colors = scores.classes.names, scores.classes.colors
    k, bar_width = len(names), 300
    image = Image.new("RGB", (_LABEL_WIDTH + bar_width + 60, 40 + k * _CELL), "white")
    draw = ImageDraw.Draw(image)
    means = "  ".join(f"{name} {100 * value:.1f}" for name, value in scores.means().items())
    draw.text((4, 8), f"{title}: {means}", fill="black", font=_FONT)
    for i, (name, iou) in enumerate(zip(names, scores.per_class_iou)):
        y = 32 + i * _CELL
        draw.text((4, y + 5), name[:14], fill="black", font=_FONT)
        if np.isnan(iou):
            draw.text((_LABEL_WIDTH, y + 5), "n/a", fill="gray", font=_FONT)
            continue
        bar = [_LABEL_WIDTH, y + 2, _LABEL_WIDTH + max(1, int(bar_width * iou)), y + _CELL - 3]
        draw.rectangle(bar, fill=colors[i], outline="black")
        draw.text((_LABEL_WIDTH + int(bar_width * iou) + 4, y + 5), f"{100 * iou:.1f}", fill="black", font=_FONT)
    return _save(image, path)


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
