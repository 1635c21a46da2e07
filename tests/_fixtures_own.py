"""A user's own data, made in the tests: a 5-class labelled ``pairs`` folder and an unlabelled
folder of photos (nested subfolders, JPEGs, greyscale, mixed sizes), as docs/own-data.md has them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

#: A class list of five classes, one of them named by two raw values, and 0 as the ignore value.
FIVE_CLASSES = {
    "classes": [
        {"name": "sky", "color": [70, 130, 180], "values": [1]},
        {"name": "tree", "color": [0, 128, 0], "values": [2]},
        {"name": "road", "color": [128, 64, 128], "values": [3, 4]},
        {"name": "car", "color": [0, 0, 142], "values": [5]},
        {"name": "person", "color": [220, 20, 60], "values": [6]},
    ],
    "ignore": 0,
}


def write_class_list(path: Path, data: dict = FIVE_CLASSES) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


def scene_values(width: int, height: int, seed: int) -> np.ndarray:
    """Raw label values of a little scene: sky over trees over road (3 and 4), a car, a person, an ignored strip."""
    rng = np.random.default_rng(seed)
    rows = np.arange(height)[:, None].repeat(width, 1)
    values = np.where(rows < height // 3, 1, np.where(rows < height // 2, 2, 3 + (np.arange(width) % 8 < 4)))
    x = int(rng.integers(0, width // 2))
    values[height * 2 // 3 :, x : x + width // 4] = 5
    values[height // 2 :, width - width // 8 :] = 6
    values[-1:, :] = 0
    return values.astype(np.uint8)


def scene_image(values: np.ndarray, seed: int) -> np.ndarray:
    """An RGB picture of ``values``: each value its own colour, with noise."""
    colors = np.array(
        [[0, 0, 0], [150, 190, 230], [40, 110, 40], [90, 90, 90], [100, 100, 100], [200, 30, 30], [230, 200, 60]]
    )
    noise = np.random.default_rng(seed).integers(-20, 21, values.shape + (3,))
    return np.clip(colors[values] + noise, 0, 255).astype(np.uint8)


def write_pairs(root: Path, sizes: list[tuple[int, int]], seed: int = 0) -> Path:
    """A raw pairs folder: images (JPEG and PNG, one in a subfolder) and 8-bit label-value PNGs."""
    for index, (width, height) in enumerate(sizes):
        values = scene_values(width, height, seed + index)
        stem = f"sub/frame{index}" if index == 0 else f"frame{index}"
        suffix = ".jpg" if index % 2 else ".png"
        (root / "images" / stem).parent.mkdir(parents=True, exist_ok=True)
        (root / "labels" / stem).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene_image(values, seed + index)).save(root / "images" / f"{stem}{suffix}", quality=95)
        Image.fromarray(values).save(root / "labels" / f"{stem}.png")
    return root


def write_photos(root: Path, seed: int = 100) -> list[Path]:
    """A folder of unlabelled photos: nested subfolders, JPEGs and PNGs, colour and greyscale, mixed sizes."""
    specs = [
        ("a.jpg", (96, 48), "RGB"),
        ("b.png", (64, 40), "RGB"),
        ("day/c.jpeg", (80, 64), "L"),
        ("day/morning/d.JPG", (72, 36), "RGB"),
        ("night/e.png", (64, 32), "L"),
        ("night/f.jpg", (128, 64), "RGB"),
    ]
    written = []
    for index, (name, (width, height), mode) in enumerate(specs):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(scene_image(scene_values(width, height, seed + index), seed + index) // 2 + 60)
        image.convert(mode).save(path, quality=90)
        written.append(path)
    (root / "notes.txt").write_text("not an image")
    return written
