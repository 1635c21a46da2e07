"""A picture of the toy pair: source and target-val frames above their labels in Cityscapes colours."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cicld.data.labels import cityscapes_ids_to_train_ids, colorize, synthia_ids_to_train_ids
from cicld.data.pngio import read_image, read_png, write_image
from cicld.data.toy.generate import MANIFEST, VAL_CITY, cityscapes_stem
from cicld.errors import DataError


def render_preview(root: Path, out_png: Path, *, count: int = 4, source_format: str | None = None) -> Path:
    """Write a grid of ``count`` source frames and ``count`` target-val frames with their labels
    in Cityscapes colours (rows: source image, source label, target image, target label)."""
    root, out_png = Path(root), Path(out_png)
    manifest = root / MANIFEST
    if not manifest.exists():
        raise DataError(f"{root} holds no toy pair ({MANIFEST} is missing); run generate_toy_pair first")
    params = json.loads(manifest.read_text())
    fmt = source_format or params["source_formats"][0]
    rows: list[list[np.ndarray]] = [[], [], [], []]
    for i in range(min(count, params["num_source"], params["num_target_val"])):
        if fmt == "gta5":
            image = read_image(root / "gta5" / "images" / f"{i:05d}.png", "RGB")
            train_ids = cityscapes_ids_to_train_ids(read_image(root / "gta5" / "labels" / f"{i:05d}.png"))
        else:
            image = read_image(root / "synthia" / "RGB" / f"{i:07d}.png", "RGB")
            train_ids = synthia_ids_to_train_ids(read_png(root / "synthia" / "GT" / "LABELS" / f"{i:07d}.png")[..., 0])
        stem = cityscapes_stem("val", i)
        target = read_image(root / "cityscapes" / "leftImg8bit" / "val" / VAL_CITY / f"{stem}_leftImg8bit.png", "RGB")
        target_ids = cityscapes_ids_to_train_ids(
            read_image(root / "cityscapes" / "gtFine" / "val" / VAL_CITY / f"{stem}_gtFine_labelIds.png")
        )
        for row, tile in zip(rows, (image, colorize(train_ids), target, colorize(target_ids))):
            row.append(tile)
    if not rows[0]:
        raise DataError(f"{root} has no frames to preview")
    gap = 4
    h, w = rows[0][0].shape[:2]
    grid = np.full((4 * h + 3 * gap, len(rows[0]) * w + (len(rows[0]) - 1) * gap, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            grid[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tile
    write_image(out_png, grid)
    return out_png
