"""Inference and training speed of CICLD against a SegFormer-B5-sized peer, measured in one run.

    python benchmarks/speed.py                 # full: 1024×512 inference, 512×512 training step
    python benchmarks/speed.py --quick         # smoke size: 256×128 inference, 128×128 training
    python benchmarks/speed.py --markdown out.md --repeats 3

What is measured (in child processes, one at a time):

- inference: ``CICLD.predict`` (whole image, logits at input resolution) for S ∈ --steps, and
  the peer (``SegformerForSemanticSegmentation``, B5 config, random weights) with its logits
  upsampled to the input resolution, on one image;
- training: one optimiser step at batch 2 source + 2 target. CICLD: ``cicld adapt``'s step with
  its default settings, minus data loading and ClassMix: EMA-model pseudo-labels on the target,
  ``UDAObjective`` (source + mixed + target through E and ε_θ, D and f_cls on source + mixed
  only; CE(source) + weighted CE(mixed) + diffusion loss + 3-class discriminator loss on detached
  ẑ0 + confusion loss), one backward pass, one AdamW step over ``build_optimizer``'s groups, the
  EMA update. The peer: EMA pseudo-labels, forward on source + mixed, the two CEs, AdamW, EMA
  update (DAFormer's step);
- time: one child per task builds the peer and CICLD, warms every row up once, then runs
  --repeats rounds over all rows *interleaved* and keeps each row's best, so that on a shared
  machine the peer and CICLD see the same busy and quiet moments; ratio = CICLD / peer time;
- peak memory: a fresh child per row; CPU: growth of the process's resident-set high-water mark
  during the first call (``/proc/self/clear_refs``), so no freed heap of another row is reused;
  CUDA: ``torch.cuda.max_memory_allocated``;
- GFLOPs: ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention);
  achieved GFLOP/s as a fraction of this machine's fp32 matmul peak, measured in the same run.

Where CUDA is available, every row is repeated on the GPU in bf16 autocast (``--no-cuda`` skips it;
``--no-cpu`` skips the CPU rows, which take about 20 minutes on a small machine and are not what a
GPU run is for).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cicld.models import CICLDConfig  # noqa: E402


# ---------------------------------------------------------------------- measurement helpers
def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def resident_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak_memory(device: str) -> int:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
    except OSError:
        pass
    return resident_kib("VmRSS") * 1024


def peak_memory(device: str, baseline: int) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() - baseline
    return resident_kib("VmHWM") * 1024 - baseline


def grouped_conv_backward_flop(
    grad_out_shape,
    x_shape,
    w_shape,
    _bias,
    _stride,
    _padding,
    _dilation,
    transposed,
    _output_padding,
    _groups,
    output_mask,
    out_shape=None,
    **kwargs,
) -> int:
    """Each requested gradient (input, weight) of a convolution costs one forward convolution.

    torch's own formula computes the weight gradient as if the convolution were dense across
    channels, which overcounts grouped/depthwise convolutions (SegFormer's Mix-FFN) by the
    number of groups: 18× for the peer's backward pass."""
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_gflops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {torch.ops.aten.convolution_backward: grouped_conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def matmul_peak_gflops(device: str, size: int, repeats: int = 5) -> float:
    """fp32 on CPU; bf16 on CUDA, the precision the GPU rows run in."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


# ---------------------------------------------------------------------- the two networks
def build_peer():
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(
        hidden_sizes=[64, 128, 320, 512], depths=[3, 6, 40, 3], decoder_hidden_size=768, num_labels=19
    )
    return SegformerForSemanticSegmentation(config)


def peer_logits(model, images):
    logits = model(pixel_values=images).logits
    return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


#: The pretrained backbones ``--backbones`` can measure, by the hub id whose architecture each
#: config reproduces (random weights: speed and memory do not depend on the values).
def backbone_configs() -> dict:
    from transformers import ConvNextConfig, Dinov2Config, SegformerConfig

    return {
        "facebook/convnext-tiny-224": lambda: ConvNextConfig(hidden_sizes=[96, 192, 384, 768], depths=[3, 3, 9, 3]),
        "facebook/convnext-base-224-22k": lambda: ConvNextConfig(
            hidden_sizes=[128, 256, 512, 1024], depths=[3, 3, 27, 3]
        ),
        "facebook/dinov2-small": lambda: Dinov2Config(
            hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, patch_size=14
        ),
        "facebook/dinov2-base": lambda: Dinov2Config(
            hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, patch_size=14
        ),
        "nvidia/mit-b5": lambda: SegformerConfig(
            hidden_sizes=[64, 128, 320, 512],
            depths=[3, 6, 40, 3],
            num_attention_heads=[1, 2, 5, 8],
            sr_ratios=[8, 4, 2, 1],
        ),
    }


BACKBONE_IDS = (
    "facebook/convnext-tiny-224",
    "facebook/convnext-base-224-22k",
    "facebook/dinov2-small",
    "facebook/dinov2-base",
    "nvidia/mit-b5",
)


def build_cicld(preset: str, backbone: str | None = None):
    """CICLD of ``preset``; on the pretrained ``backbone`` (a hub id of :func:`backbone_configs`)
    if one is named, with random weights."""
    from cicld.models import CICLD, CICLDConfig
    from cicld.models.backbone import backbone_config

    config = CICLDConfig.preset(preset)
    if backbone is not None:
        recorded = backbone_config(backbone_configs()[backbone]())
        config = config.replace(backbone=recorded, backbone_source=backbone, backbone_sha256="random weights")
    return CICLD(config)


def make_batch(size: int, device: str, num_classes: int = 19):
    g = torch.Generator().manual_seed(0)
    source = torch.randn(2, 3, size, size, generator=g).to(device)
    mixed = torch.randn(2, 3, size, size, generator=g).to(device)
    target = torch.randn(2, 3, size, size, generator=g).to(device)
    labels = torch.randint(0, num_classes, (2, size, size), generator=g).to(device)
    return source, mixed, target, labels


def cicld_train_step_fn(model, size: int, device: str):
    """``cicld adapt``'s step with its default settings, minus data loading and ClassMix: the EMA
    model's pseudo-labels, :class:`UDAObjective`'s losses, one backward pass over their sum, one
    AdamW step over :func:`build_optimizer`'s groups (f_dis included), the EMA update."""
    from cicld.training.common import build_optimizer
    from cicld.training.config import AdaptConfig
    from cicld.training.objectives import UDAObjective
    from cicld.training.schedules import ema_update

    config = AdaptConfig()
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    objective = UDAObjective(model, config).train()
    optimizer = build_optimizer(objective, config)
    source, mixed, target, labels = make_batch(size, device, model.config.num_classes)
    weights = torch.full(labels.shape, 0.9, device=device)  # the pseudo-labels' confidence weights

    def step():
        pseudo = ema.predict(target).argmax(dim=1)  # pseudo-labels for the mixed images
        losses = objective(source, labels, mixed, pseudo, weights, target)
        sum(losses.values()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema_update(ema, model, step=1000, max_alpha=config.ema_alpha)

    return step


def peer_train_step_fn(model, size: int, device: str):
    """DAFormer's step: EMA pseudo-labels, forward on source + mixed, the two CEs, AdamW, EMA update."""
    from cicld.models.losses import segmentation_loss
    from cicld.training.schedules import ema_update

    ema = copy.deepcopy(model).eval()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-5)
    source, mixed, target, labels = make_batch(size, device)

    def step():
        with torch.no_grad():
            pseudo = peer_logits(ema, target).argmax(dim=1)
        logits = peer_logits(model, torch.cat([source, mixed]))
        loss = segmentation_loss(logits[:2], labels) + segmentation_loss(logits[2:], pseudo, pixel_weight=0.9)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema_update(ema, model, step=1000, max_alpha=0.999)

    return step


# ---------------------------------------------------------------------- child processes
def make_runner(spec: dict, models: dict):
    """The timed callable of one row. Inference rows share one network per model (cached in
    ``models``); a training row owns its network, optimiser state and EMA copy."""
    device = spec["device"]
    is_peer = spec["model"] == "segformer-b5"

    def build():
        torch.manual_seed(0)
        return (build_peer() if is_peer else build_cicld(spec["preset"], spec.get("backbone"))).to(device)

    if spec["task"] == "train":
        call = (peer_train_step_fn if is_peer else cicld_train_step_fn)(build(), spec["height"], device)
        grad_context = torch.enable_grad
    else:
        key = (spec["model"], spec["preset"], spec.get("backbone"))
        if key not in models:
            models[key] = build().eval()
        model = models[key]
        images = torch.randn(1, 3, spec["height"], spec["width"], generator=torch.Generator().manual_seed(0)).to(device)
        if is_peer:
            call = lambda: peer_logits(model, images)  # noqa: E731
        else:
            call = lambda: model.predict(images, steps=spec["steps"])  # noqa: E731
        grad_context = torch.no_grad
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    )

    def run():
        with grad_context(), autocast:
            call()
        synchronize(device)

    return run


def profile_row(spec: dict) -> dict:
    """Fresh process, one row: peak memory of the first call, then a FLOP count."""
    run = make_runner(spec, {})
    baseline = reset_peak_memory(spec["device"])
    run()
    memory = peak_memory(spec["device"], baseline)
    return {"memory_mib": memory / 2**20, "gflops": count_gflops(run)}


#: A timed sample repeats a call until it lasts about this long: a GPU call of a few milliseconds,
#: timed alone, is mostly timer and launch jitter.
MIN_SAMPLE_SECONDS = 0.2


def time_rows(specs: list[dict], repeats: int) -> dict:
    """Times rows *interleaved*: warm-up calls for each row, then ``repeats`` rounds over all rows.

    On a shared machine the load changes over minutes; timing the rows one after another would
    compare a quiet minute with a busy one. Interleaving exposes every row to the same moments,
    and the best of the rounds estimates each row's unloaded time. Each sample is the mean of
    enough back-to-back calls to last about ``MIN_SAMPLE_SECONDS``, sized by a second, timed
    warm-up call; a row whose first call takes over a second (every CPU row at full size) times
    one call per sample and skips that second call."""
    models: dict = {}
    runners = [make_runner(spec, models) for spec in specs]
    calls = []
    for run in runners:
        start = time.perf_counter()
        run()
        if time.perf_counter() - start > 5 * MIN_SAMPLE_SECONDS:  # over a second: one call is a sample
            calls.append(1)
            continue
        start = time.perf_counter()
        run()  # the second warm-up call, timed, sizes the samples
        calls.append(max(1, math.ceil(MIN_SAMPLE_SECONDS / max(time.perf_counter() - start, 1e-6))))
    times = [[] for _ in runners]
    load = [os.getloadavg()[0]]
    for _ in range(repeats):
        for i, run in enumerate(runners):
            start = time.perf_counter()
            for _ in range(calls[i]):
                run()
            times[i].append((time.perf_counter() - start) / calls[i])
        load.append(os.getloadavg()[0])
    return {"seconds": [min(t) for t in times], "all_seconds": times, "calls": calls, "load": load}


def run_child(mode: str, payload) -> dict:
    command = [
        sys.executable,
        __file__,
        f"--child-{mode}",
        json.dumps(payload),
        "--threads",
        str(torch.get_num_threads()),
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(f"{mode} child for {payload} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- report
def machine_description(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (bf16 autocast), torch {torch.__version__}"
    cpu = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__} (fp32)"


def markdown_table(rows: list[dict], peak: dict[str, float]) -> str:
    header = (
        "| device | model | task | size | S | time (s) | × peer time | peak mem (MiB) | GFLOPs | GFLOP/s "
        "| % of matmul peak |"
    )
    lines = [header, "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    peers = {(r["device"], r["task"]): r["seconds"] for r in rows if r["model"] == "segformer-b5"}
    for r in rows:
        ratio = r["seconds"] / peers[(r["device"], r["task"])] if (r["device"], r["task"]) in peers else float("nan")
        achieved = r["gflops"] / r["seconds"]
        size = f"{r['width']}×{r['height']}" if r["task"] == "inference" else f"2+2 × {r['height']}²"
        steps = "" if r["model"] == "segformer-b5" else ("—" if r["task"] == "train" else str(r["steps"]))
        name = "SegFormer-B5 peer" if r["model"] == "segformer-b5" else cicld_name(r)
        lines.append(
            f"| {r['device']} | {name} | {r['task']} | {size} | {steps} | {r['seconds']:.4g} | {ratio:.2f} | "
            f"{r['memory_mib']:.0f} | {r['gflops']:.0f} | {achieved:.0f} | {100 * achieved / peak[r['device']]:.0f}% |"
        )
    return "\n".join(lines)


def cicld_name(r: dict) -> str:
    backbone = r.get("backbone")
    return f"CICLD {r['preset']}" + ("" if backbone is None else f" on {backbone.split('/')[-1]}")


def row_name(r: dict) -> str:
    model = "peer" if r["model"] == "segformer-b5" else cicld_name(r)
    steps = "" if r["task"] == "train" or r["steps"] is None else f" S={r['steps']}"
    return f"{r['device']} {model} {r['task']}{steps}"


def round_ratios(rows: list[dict]) -> list[str]:
    """× peer time of each timing round: a row over the peer's time in the same round, i.e. in the
    same minutes. The spread of these shows how much the machine's load moved the best-of ratio."""
    peers = {(r["device"], r["task"]): r["all_seconds"] for r in rows if r["model"] == "segformer-b5"}
    lines = []
    for r in rows:
        if r["model"] != "segformer-b5" and (r["device"], r["task"]) in peers:
            ratios = [mine / peer for mine, peer in zip(r["all_seconds"], peers[(r["device"], r["task"])])]
            steps = "" if r["task"] == "train" else f" S={r['steps']}"
            lines.append(
                f"- × peer per round, {r['device']} {cicld_name(r)} {r['task']}{steps}: "
                + ", ".join(f"{x:.2f}" for x in ratios)
            )
    return lines


def print_rich(rows: list[dict], peak: dict[str, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="CICLD vs SegFormer-B5 peer")
    for column in ("device", "model", "task", "S", "time (s)", "× peer", "peak MiB", "GFLOPs", "% peak"):
        table.add_column(column, justify="right" if column not in ("device", "model", "task") else "left")
    peers = {(r["device"], r["task"]): r["seconds"] for r in rows if r["model"] == "segformer-b5"}
    for r in rows:
        achieved = r["gflops"] / r["seconds"]
        table.add_row(
            r["device"],
            "SegFormer-B5" if r["model"] == "segformer-b5" else cicld_name(r),
            r["task"],
            "" if r["model"] == "segformer-b5" or r["task"] == "train" else str(r["steps"]),
            f"{r['seconds']:.4g}",
            f"{r['seconds'] / peers[(r['device'], r['task'])]:.2f}",
            f"{r['memory_mib']:.0f}",
            f"{r['gflops']:.0f}",
            f"{100 * achieved / peak[r['device']]:.0f}%",
        )
    Console(width=max(Console().width, 140)).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="base", help="CICLD preset to measure (default: base)")
    parser.add_argument("--steps", default="0,1,2,4,10", help="comma-separated DDIM step counts S")
    parser.add_argument(
        "--backbones",
        default="",
        help="comma-separated hub ids of pretrained backbones to measure CICLD on as well "
        "(inference at the model's default S and the training step; random weights): " + ", ".join(BACKBONE_IDS),
    )
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--train-size", type=int, default=512, help="square training crop")
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved timing rounds after the warm-up (best is kept)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke sizes: 256×128 inference, 128² training, S ∈ {0, 1}"
    )
    parser.add_argument("--no-train", action="store_true", help="skip the training-step rows")
    parser.add_argument(
        "--train-backbones",
        default=None,
        help="comma-separated backbones (of --backbones) that get a training row "
        "(default: all of them); the training rows are timed in one process, and every training row holds its own "
        "network, optimiser and EMA copy (9-12 GiB for the large backbones at 512²): keep the group within memory",
    )
    parser.add_argument(
        "--no-preset-train", action="store_true", help="leave the plain preset's training row out (the peer's stays)"
    )
    parser.add_argument("--no-cuda", action="store_true", help="skip the bf16 GPU rows even if CUDA is available")
    parser.add_argument("--no-cpu", action="store_true", help="skip the fp32 CPU rows (for a GPU run)")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--threads", type=int, help="torch CPU threads for every measurement (default: torch's choice)")
    parser.add_argument("--markdown", type=Path, help="also write the markdown table here")
    parser.add_argument("--child-profile", help=argparse.SUPPRESS)
    parser.add_argument("--child-time", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.child_profile:
        print(json.dumps(profile_row(json.loads(args.child_profile))))
        return
    if args.child_time:
        payload = json.loads(args.child_time)
        print(json.dumps(time_rows(payload["specs"], payload["repeats"])))
        return

    if args.quick:
        args.width, args.height, args.train_size, args.steps = 256, 128, 128, "0,1"
    steps = [int(s) for s in args.steps.split(",") if s.strip()]
    backbones = [b for b in args.backbones.split(",") if b.strip()]
    default_steps = CICLDConfig().inference_steps  # the backbone rows run as a model runs by default
    trained = backbones if args.train_backbones is None else [b for b in args.train_backbones.split(",") if b.strip()]
    if not set(trained) <= set(backbones):
        parser.error("--train-backbones: each must be one of --backbones")
    unknown = [b for b in backbones if b not in BACKBONE_IDS]
    if unknown:
        parser.error(f"--backbones: no config for {', '.join(unknown)}; choose from {', '.join(BACKBONE_IDS)}")
    devices = ([] if args.no_cpu else ["cpu"]) + (["cuda"] if torch.cuda.is_available() and not args.no_cuda else [])
    if not devices:
        parser.error("nothing to measure: --no-cpu without a CUDA device (or with --no-cuda)")

    peak = {device: matmul_peak_gflops(device, args.matmul_size) for device in devices}
    rows, loads = [], {}
    for device in devices:
        base = {"device": device, "preset": args.preset, "width": args.width, "height": args.height}
        groups = [
            [{**base, "model": "segformer-b5", "task": "inference", "steps": None}]
            + [{**base, "model": "cicld", "task": "inference", "steps": s} for s in steps]
            + [
                {**base, "model": "cicld", "task": "inference", "steps": default_steps, "backbone": b}
                for b in backbones
            ]
        ]
        if not args.no_train:
            train = {**base, "task": "train", "width": args.train_size, "height": args.train_size, "steps": None}
            groups.append(
                [{**train, "model": "segformer-b5"}]
                + ([] if args.no_preset_train else [{**train, "model": "cicld"}])
                + [{**train, "model": "cicld", "backbone": b} for b in trained]
            )
        for specs in groups:
            for spec in specs:
                print(
                    f"profiling {spec['model']} {spec['task']} on {device}"
                    + (f", S={spec['steps']}" if spec["steps"] is not None else ""),
                    file=sys.stderr,
                    flush=True,
                )
                spec.update(run_child("profile", spec))
            print(
                f"timing {len(specs)} {specs[0]['task']} rows interleaved, {args.repeats} rounds",
                file=sys.stderr,
                flush=True,
            )
            timed = run_child("time", {"specs": specs, "repeats": args.repeats})
            for spec, seconds, all_seconds, calls in zip(specs, timed["seconds"], timed["all_seconds"], timed["calls"]):
                rows.append({**spec, "seconds": seconds, "all_seconds": all_seconds, "calls": calls})
            loads[(device, specs[0]["task"])] = timed["load"]

    # Measured again at the end; the higher figure is the machine's peak (a shared machine may be
    # busier at one of the two moments).
    peak = {device: max(peak[device], matmul_peak_gflops(device, args.matmul_size)) for device in devices}
    print_rich(rows, peak)
    command = "python benchmarks/speed.py " + " ".join(sys.argv[1:])
    report = [
        f"Command: `{command.strip()}`",
        "",
        *[
            f"- {device}: {machine_description(device)}; measured {'bf16' if device == 'cuda' else 'fp32'} matmul "
            f"peak {peak[device]:.0f} GFLOP/s ({args.matmul_size}² matmul)"
            for device in devices
        ],
        "",
        *[
            f"- load average (1 min) during the {task} timing rounds on {device}: "
            + " → ".join(f"{x:.1f}" for x in load)
            for (device, task), load in loads.items()
        ],
        *round_ratios(rows),
        "- calls per timed sample (back to back, about "
        f"{MIN_SAMPLE_SECONDS} s): " + ", ".join(f"{row_name(r)} {r['calls']}" for r in rows),
        "",
        markdown_table(rows, peak),
    ]
    text = "\n".join(report)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
