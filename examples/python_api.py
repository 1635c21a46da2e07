"""Segment one image with a trained cicld model from Python and save its colour map.

    python examples/python_api.py MODEL IMAGE [OUT] [--height 512]

MODEL is a model folder (``config.json`` + ``model.safetensors``) or a finished run, e.g.
``runs/latest``. OUT defaults to ``IMAGE_color.png`` beside the image. ``cicld predict`` does the
same for many images at once; this is the code path to copy into your own program.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cicld.data.labels import CLASSES, colorize
from cicld.data.pngio import read_image, write_image
from cicld.data.transforms import normalize, resize_image
from cicld.errors import CicldError
from cicld.evaluation.predict import inference_size
from cicld.models import CICLD
from cicld.training.locate import resolve_model_dir


def segment(model: CICLD, image: np.ndarray, height: int | None = None) -> np.ndarray:
    """(H, W) uint8 Cityscapes trainIds for an (H, W, 3) uint8 RGB image.

    The model runs at ``height`` (aspect ratio kept; default: the height of the model's own
    ``config.input_size``, the size it was trained at, or the image's height where that is None):
    a model trained on 1024x512 Cityscapes frames segments a 2048x1024 photo best at height 512.
    The logits are then upsampled to the image, so the label map always has the image's size.
    """
    config = model.config  # the model folder's config.json says how to run it
    if height is None and config.input_size is not None:
        height = config.input_size[1]
    size = inference_size(image.shape[1], image.shape[0], height, config.size_divisor)
    batch = normalize(resize_image(image, size), config.image_mean, config.image_std)[None].to(
        model.device
    )  # (1, 3, h, w)
    logits = model.predict(batch)  # (1, 19, h, w): S = config.inference_steps DDIM steps, seeded noise
    logits = F.interpolate(logits.float(), size=image.shape[:2], mode="bilinear", align_corners=False)
    return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description="Segment one image and save its colour map.")
    parser.add_argument("model", type=Path, help="model folder or finished run (e.g. runs/latest)")
    parser.add_argument("image", type=Path, help="an RGB image (PNG, JPEG, ...)")
    parser.add_argument("out", type=Path, nargs="?", help="colour PNG to write [default: IMAGE_color.png]")
    parser.add_argument("--height", type=int, help="run the model at this image height [default: the model's]")
    args = parser.parse_args()

    try:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = CICLD.from_pretrained(resolve_model_dir(args.model), device=device).eval()
        image = read_image(args.image, "RGB")
    except CicldError as error:  # a missing file or a folder that is not a model: one line, no traceback
        sys.exit(f"error: {error}")
    train_ids = segment(model, image, args.height)
    out = args.out or args.image.with_name(f"{args.image.stem}_color.png")
    write_image(out, colorize(train_ids))  # official Cityscapes colours; written atomically

    shares = np.bincount(train_ids.ravel(), minlength=256)[: len(CLASSES)] / train_ids.size
    top = ", ".join(f"{CLASSES[c]} {100 * shares[c]:.0f}%" for c in np.argsort(-shares)[:3] if shares[c] > 0)
    print(f"{out}: {image.shape[1]}x{image.shape[0]}, most pixels: {top}")


if __name__ == "__main__":
    main()
