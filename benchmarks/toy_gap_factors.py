"""What is the toy domain gap made of? Switch the target's differences off one group at a time.

    PYTHONPATH=. python benchmarks/toy_gap_factors.py --seeds 0 1 2      # about 3 min a seed, 1 thread

The toy target differs from the source in three groups of things (cicld/data/toy/world.py and
photo.py): its **palette** (the colour of each class: greyer road, plaster buildings, olive
vegetation, ...), its **photograph** (material textures, shadows and clouds; exposure, white
balance, gamma, vignetting, lens blur, sensor noise) and its **scene statistics** (camera height,
horizon, focal length, street widths, how many persons, buses, trees, ...). This script trains the
plain CNN of ``benchmarks/toy_domain_gap.py`` on the source (its own recipe: 500 steps, batch 8,
whole images, class weights) and evaluates it on the target val frames rendered again with some
of these groups replaced by the source's, from the same frame seeds. Rendering a group differently
also changes the random draws that come after it (palette jitter, textures), so the rows without
the palette or the photograph are *other scenes* from the same scene distribution, not the same
scenes: the row "other scenes" (the next ``--num-val`` val frames, as shipped) measures what that
alone moves. The last row is the source's own hold-out (no gap at all).

Reads cicld's private toy world definitions and swaps them while rendering (restored after).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from toy_domain_gap import evaluate, load_source, train  # noqa: E402

from cicld.data.toy import generate_toy_pair, photo, render_frame, world  # noqa: E402

S, T = world._SOURCE, world._TARGET
NEUTRAL_CAMERA = dict(
    gain=(1.0, 1.0), cast=(1.0, 1.0, 1.0), gamma=(1.0, 1.0), vignetting=(0.0, 0.0), blur=0, noise=(0.0, 0.0)
)
# name -> (target world, target photograph); None: as shipped
VARIANTS = {
    "target as shipped": (T, photo._CAMERA),
    "- camera (no exposure, cast, gamma, vignetting, blur, noise)": (
        T,
        dataclasses.replace(photo._CAMERA, **NEUTRAL_CAMERA),
    ),
    "- textures, shadows, clouds": (T, dataclasses.replace(photo._CAMERA, texture=0.0, shadows=0.0, clouds=0.0)),
    "- photograph (flat rendering)": (dataclasses.replace(T, photo=False), photo._CAMERA),
    "- palette (source class colours)": (dataclasses.replace(T, palette=S.palette, jitter=S.jitter), photo._CAMERA),
    "- palette - photograph (scene statistics only)": (
        dataclasses.replace(T, palette=S.palette, jitter=S.jitter, photo=False),
        photo._CAMERA,
    ),
}


@contextmanager
def target_rendered_as(target_world, camera):
    saved = world._WORLDS["target"], photo._CAMERA
    world._WORLDS["target"], photo._CAMERA = target_world, camera
    try:
        yield
    finally:
        world._WORLDS["target"], photo._CAMERA = saved


def render_val(pair_seed: int, count: int, size: tuple[int, int], start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    frames = [
        render_frame("target", seed=pair_seed, split="val", index=i, size=size) for i in range(start, start + count)
    ]
    return np.stack([f.image for f in frames]), np.stack([f.train_ids for f in frames])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds of the source-only CNN")
    parser.add_argument("--pair-seed", type=int, default=0)
    parser.add_argument("--num-source", type=int, default=400)
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    size = (256, 128)
    with tempfile.TemporaryDirectory(prefix="cicld-gap-") as scratch:
        root = Path(scratch) / "toy"
        generate_toy_pair(
            root, seed=args.pair_seed, size=size, num_source=args.num_source, num_target_train=1, num_target_val=1
        )
        source_x, source_y = load_source(root, args.num_source)
    held_out = max(1, args.num_source // 10)
    evaluations = {}
    for name, (target_world, camera) in VARIANTS.items():
        with target_rendered_as(target_world, camera):
            evaluations[name] = render_val(args.pair_seed, args.num_val, size)
        if name == "target as shipped":
            evaluations["target as shipped, other scenes (the next val frames)"] = render_val(
                args.pair_seed, args.num_val, size, start=args.num_val
            )
    evaluations["source hold-out (no gap)"] = (source_x[-held_out:], source_y[-held_out:])
    scores: dict[str, list[float]] = {name: [] for name in evaluations}
    for seed in args.seeds:
        model = train(source_x[:-held_out], source_y[:-held_out], args.steps, 8, seed)
        for name, (x, y) in evaluations.items():
            scores[name].append(round(evaluate(model, x, y)[0], 1))
        print(f"seed {seed}: " + ", ".join(f"{v[-1]}" for v in scores.values()), flush=True)
    print(f"\n{'target val rendered with':<62}{'mIoU':>8}{'± std':>8}   per seed")
    for name, values in scores.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{name:<62}{statistics.mean(values):>8.1f}{spread:>8.1f}   {values}")
    print(f"\nwall time {time.perf_counter() - started:.0f} s ({args.threads} thread(s))")
    result = {"seeds": args.seeds, "pair_seed": args.pair_seed, "scores": scores}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
