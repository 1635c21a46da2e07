"""Does ``torch.compile`` make cicld's inference faster on a CPU? (issue 25, item 9)

Times ``CICLD.predict`` with S DDIM steps, eager against ε_θ compiled with ``torch.compile``
(inductor; the default mode), in one process on the same random weights and input, and prints
both, their ratio and the one-off compile time. The outputs are compared too: a compiled model
that computed something else would not count.

    OMP_NUM_THREADS=2 python benchmarks/compile_cpu.py                      # small at 256x128, base at 512x256
    python benchmarks/compile_cpu.py --preset base --size 1024x512 --steps 1 --repeats 3

Run it on an otherwise idle machine. ε_θ is what S multiplies (E, D and f_cls run once per
image), so it is what is compiled; the condition is an argument of its forward (no hook), so
it compiles as one graph.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cicld.models import CICLD, CICLDConfig


def timed(model: CICLD, images: torch.Tensor, steps: int, repeats: int) -> tuple[float, torch.Tensor]:
    """The median seconds of ``repeats`` predictions (after one warm-up call) and the last output."""
    with torch.inference_mode():
        out = model.predict(images, steps=steps)
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            out = model.predict(images, steps=steps)
            seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), out


def measure(preset: str, size: tuple[int, int], steps: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = CICLD(CICLDConfig.preset(preset)).eval()
    width, height = size
    images = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(1))
    eager_seconds, eager_out = timed(model, images, steps, repeats)
    model.unet = torch.compile(model.unet)
    started = time.perf_counter()
    with torch.inference_mode():
        model.predict(images, steps=steps)  # the first call compiles
    compile_seconds = time.perf_counter() - started
    compiled_seconds, compiled_out = timed(model, images, steps, repeats)
    return {
        "preset": preset,
        "size": f"{width}x{height}",
        "S": steps,
        "eager": eager_seconds,
        "compiled": compiled_seconds,
        "compile": compile_seconds,
        "max_diff": (compiled_out - eager_out).abs().max().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", action="append", help="model preset(s) (default: small and base)")
    parser.add_argument("--size", action="append", help="WIDTHxHEIGHT per preset (default: 256x128, 512x256)")
    parser.add_argument("--steps", type=int, default=1, help="DDIM steps S (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per setting (median; default 5)")
    args = parser.parse_args()
    presets = args.preset or ["small", "base"]
    sizes = args.size or ["256x128", "512x256"][: len(presets)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, S = {args.steps}, median of {args.repeats}")
    print("| preset | size | eager (s) | compiled (s) | compiled / eager | compile time (s) | max |Δ logit| |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for preset, size in zip(presets, sizes):
        width, height = (int(v) for v in size.split("x"))
        r = measure(preset, (width, height), args.steps, args.repeats)
        print(
            f"| {r['preset']} | {r['size']} | {r['eager']:.4g} | {r['compiled']:.4g} | "
            f"{r['compiled'] / r['eager']:.2f} | {r['compile']:.0f} | {r['max_diff']:.1e} |"
        )


if __name__ == "__main__":
    main()
