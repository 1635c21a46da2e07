"""The toy UDA benchmark: source-only vs CICLD vs oracle over seeds, and the paper's ablations.

Every number comes from the real commands (`cicld pretrain-ae`, `pretrain-ldm`, `adapt`,
`evaluate`) run as subprocesses on one toy pair with the toy recipe (`--source toy`):

- **main**: for each seed, pretrain-ae → pretrain-ldm → adapt with `--method source-only`,
  `self-training` (the no-diffusion baseline), `cicld` and `oracle` (target labels); target-val
  mIoU19 as mean ± std over the seeds; the CICLD models also at S = 0, 1, 2, 10 DDIM steps.
  With `--source-format synthia` the pair's source is written in SYNTHIA's format and every stage
  runs with `--source synthia --recipe toy`; scores are then mIoU16, SYNTHIA's benchmark.
- **table1** (paper Table 1; on the first seed, or on the first ``--table-seeds`` seeds):
  conditioning × inter-coder connection. The variants share their seed's autoencoder (neither
  switch changes it) and train pretrain-ldm (with `--[no-]conditioning --[no-]inter-coder`) + adapt.
- **table2** (paper Table 2; the same seeds): adapt from their seed's main pretrain-ldm with
  CE only (`--adversarial none`: ClassMix self-training + diffusion loss), 2-class adversarial,
  3-class adversarial (the main run), 3-class + contrastive, 3-class + MMD.

With `--backbone PATH` every `pretrain-ae` builds its model on that pretrained backbone (`{seed}` in
PATH is replaced by the job's seed: `benchmarks/toy_backbone.py` writes one per seed), and the
report adds the backbone's own zero-shot score from the `report.json` beside it, if there is one;
`--ldm-flags` and `--adapt-flags` add flags to every `pretrain-ldm` and `adapt` job (the
feature distance, the backbone's learning rate...).

With `--prior N` every model starts from a *toy prior*, the toy's stand-in for the pre-trained
weights real UDA starts from: the pair gets N generic-world frames (`prepare-data toy --generic N`:
random colours, half photographed, neither domain), each `pretrain-ldm` trains on them instead of
the source (`--prior-steps` steps), and `adapt` fine-tunes at `--finetune-lr` (the oracle keeps the
recipe's rate); the report adds the prior's own score on the target ("zero-shot").

Jobs run `--jobs` at a time, each with one torch thread; a re-run reuses finished jobs.
Writes `<out>/results.json` and a markdown report (`--markdown`, default `<out>/uda_toy.md`).

    PYTHONPATH=. python benchmarks/uda_toy.py --out bench/uda_toy --jobs 2
    PYTHONPATH=. python benchmarks/uda_toy.py --out bench/quick --quick     # plumbing check, minutes
    PYTHONPATH=. python benchmarks/uda_toy.py --out bench/prior --prior 2000 --tables none
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cicld.data.labels import CLASSES  # noqa: E402
from cicld.training.locate import newest_finished_run  # noqa: E402


@dataclass
class Job:
    """One training stage run into its own runs folder, then evaluated on the toy target val."""

    name: str
    stage: str
    flags: list[str] = field(default_factory=list)
    after: str | None = None  # the job whose model this one starts from (--init-from)
    data: str | None = None  # the pair's folder it trains on (None: the source)


def with_prior(jobs: list[Job], steps: int, finetune_lr: float) -> list[Job]:
    """The same jobs from a toy prior: pretrain-ldm on the generic world, adapt at a fine-tuning rate."""
    changed = []
    for job in jobs:
        if job.stage == "pretrain-ldm":
            job = replace(job, flags=[*job.flags, f"--steps={steps}"], data="generic")
        elif job.stage == "adapt" and "--method=oracle" not in job.flags:
            job = replace(job, flags=[*job.flags, f"--lr={finetune_lr}"])
        changed.append(job)
    return changed


def with_backbone(jobs: list[Job], backbone: str | None, ldm_flags: list[str], adapt_flags: list[str]) -> list[Job]:
    """The same jobs on a pretrained backbone (``{seed}`` in ``backbone`` becomes each job's seed),
    with extra flags for every pretrain-ldm and adapt job."""
    changed = []
    for job in jobs:
        if job.stage == "pretrain-ae" and backbone is not None:
            seed = next(f.split("=", 1)[1] for f in job.flags if f.startswith("--seed="))
            job = replace(job, flags=[*job.flags, f"--backbone={backbone.replace('{seed}', seed)}"])
        elif job.stage == "pretrain-ldm":
            job = replace(job, flags=[*job.flags, *ldm_flags])
        elif job.stage == "adapt":
            job = replace(job, flags=[*job.flags, *adapt_flags])
        changed.append(job)
    return changed


def backbone_zero_shot(backbone: str | None, seeds: list[int]) -> dict[int, float]:
    """The zero-shot mIoU19 that benchmarks/toy_backbone.py recorded beside each seed's backbone."""
    found = {}
    for seed in seeds:
        report = Path(str(backbone).replace("{seed}", str(seed))).parent / "report.json"
        if backbone is not None and report.is_file():
            found[seed] = json.loads(report.read_text())["zero_shot_target_val"]["miou19"]
    return found


def plan(seeds: list[int], tables: set[str], table_seeds: int = 1) -> list[Job]:
    jobs: list[Job] = []
    first = seeds[0]
    for seed in seeds:
        s = [f"--seed={seed}"]
        jobs += [
            Job(f"ae-s{seed}", "pretrain-ae", s),
            Job(f"ldm-s{seed}", "pretrain-ldm", s, after=f"ae-s{seed}"),
            Job(f"source-only-s{seed}", "adapt", [*s, "--method=source-only"], after=f"ldm-s{seed}"),
            Job(f"self-training-s{seed}", "adapt", [*s, "--method=self-training"], after=f"ldm-s{seed}"),
            Job(f"cicld-s{seed}", "adapt", s, after=f"ldm-s{seed}"),
            Job(f"oracle-s{seed}", "adapt", [*s, "--method=oracle"], after=f"ldm-s{seed}"),
        ]
    for seed in seeds[:table_seeds]:
        s, tail = [f"--seed={seed}"], "" if seed == first else f"-s{seed}"  # the first seed's jobs keep their old names
        if "table1" in tables:
            for conditioning in (False, True):
                for inter_coder in (False, True):
                    if conditioning and inter_coder:
                        continue  # the main run
                    tag = f"cond{int(conditioning)}-ic{int(inter_coder)}{tail}"
                    switches = [
                        f"--{'' if conditioning else 'no-'}conditioning",
                        f"--{'' if inter_coder else 'no-'}inter-coder",
                    ]
                    jobs += [
                        Job(f"ldm-{tag}", "pretrain-ldm", [*s, *switches], after=f"ae-s{seed}"),
                        Job(f"cicld-{tag}", "adapt", s, after=f"ldm-{tag}"),
                    ]
        if "table2" in tables:
            jobs += [
                Job(f"ce-only{tail}", "adapt", [*s, "--adversarial=none"], after=f"ldm-s{seed}"),
                Job(f"adv-2class{tail}", "adapt", [*s, "--adversarial=2class"], after=f"ldm-s{seed}"),
                Job(f"adv-3class-cl{tail}", "adapt", [*s, "--contrastive"], after=f"ldm-s{seed}"),
                Job(f"adv-3class-mmd{tail}", "adapt", [*s, "--mmd"], after=f"ldm-s{seed}"),
            ]
    return jobs


# --------------------------------------------------------------------------- running


class Runner:
    def __init__(
        self, out: Path, data: Path, quick: bool, steps_sweep: tuple[int, ...] = (), source_format: str = "gta5"
    ):
        self.out, self.data, self.quick, self.steps_sweep = out, data, quick, steps_sweep
        self.source_format = source_format
        # The toy recipe either way; a SYNTHIA-format source is named as such (docs/toy.md).
        self.source_flags = ["--source=toy"] if source_format == "gta5" else ["--source=synthia", "--recipe=toy"]
        self.metric = "mIoU19" if source_format == "gta5" else "mIoU16"
        self.finals: dict[str, Path] = {}
        self.seconds: dict[str, float] = {}
        self.scores: dict[str, dict] = {}

    def cicld(self, *args: str, log: Path) -> None:
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        }
        with open(log, "a") as handle:
            done = subprocess.run(
                [sys.executable, "-m", "cicld", *args], stdout=handle, stderr=subprocess.STDOUT, env=env
            )
        if done.returncode != 0:
            raise RuntimeError(f"`cicld {' '.join(args)}` failed (exit {done.returncode}); see {log}")

    def run(self, job: Job) -> None:
        runs_root = self.out / "runs" / job.name
        finished = newest_finished_run(runs_root, job.stage)
        log = self.out / "logs" / f"{job.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        if finished is None:
            started = time.perf_counter()
            if any((runs_root / job.stage).glob("*/checkpoints/step-*")):  # interrupted: continue it as saved
                self.cicld(job.stage, *self.source_flags, f"--runs-root={runs_root}", "--resume=latest", log=log)
            else:
                init = self.start_model(job)
                quick = (
                    ["--steps=3", "--batch-size=2", "--crop=none", "--val-every=0", "--checkpoint-every=2"]
                    if self.quick
                    else []
                )
                self.cicld(
                    job.stage,
                    *self.source_flags,
                    f"--runs-root={runs_root}",
                    f"--source-root={self.data / (job.data or self.source_format)}",
                    f"--target-root={self.data / 'cityscapes'}",
                    *([f"--init-from={init}"] if init else []),
                    *job.flags,
                    *quick,
                    log=log,
                )
            self.seconds[job.name] = time.perf_counter() - started
            finished = newest_finished_run(runs_root, job.stage)
        self.finals[job.name] = finished / "final"
        if job.stage != "pretrain-ae":
            self.scores[job.name] = self.evaluate(job.name, finished / "final", log)
        if job.name.startswith("cicld-s") and self.steps_sweep:
            for steps in self.steps_sweep:  # what S, the number of DDIM steps at inference, buys
                name = f"{job.name}-S{steps}"
                self.scores[name] = self.evaluate(name, finished / "final", log, f"--steps={steps}")

    def evaluate(self, name: str, model: Path, log: Path, *flags: str) -> dict:
        scores = self.out / "scores" / f"{name}.json"
        if not scores.is_file():
            scores.parent.mkdir(parents=True, exist_ok=True)
            self.cicld(
                "evaluate",
                str(model),
                f"--data={self.data / 'cityscapes'}",
                f"--json={scores}",
                f"--out={self.out / 'plots' / name}",
                *flags,
                log=log,
            )
        return json.loads(scores.read_text())

    def start_model(self, job: Job) -> Path | None:
        return None if job.after is None else self.finals[job.after]


def run_all(runner: Runner, jobs: list[Job], workers: int) -> None:
    """Run jobs as soon as the job they start from has finished, ``workers`` at a time."""
    pending = {job.name: job for job in jobs}
    futures: dict = {}
    with ThreadPoolExecutor(workers) as pool:
        while pending or futures:
            ready = [j for j in pending.values() if j.after is None or j.after in runner.finals]
            for job in ready[: max(0, workers - len(futures))]:
                futures[pool.submit(runner.run, job)] = job
                del pending[job.name]
            done = next((f for f in futures if f.done()), None)
            if done is None:
                time.sleep(0.5)
                continue
            job = futures.pop(done)
            done.result()  # re-raise a failed job
            score = runner.scores.get(job.name, {}).get(runner.metric)
            took = runner.seconds.get(job.name)
            print(
                f"{job.name:<18} {'' if score is None else f'{runner.metric} {100 * score:5.1f}'}"
                f"{'' if took is None else f'  ({took:.0f} s)'}",
                flush=True,
            )


# --------------------------------------------------------------------------- report


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def report(
    runner: Runner,
    seeds: list[int],
    tables: set[str],
    command: str,
    wall: float,
    table_seeds: int = 1,
    prior: bool = False,
    zero_shot: dict[int, float] | None = None,
) -> str:
    metric = runner.metric
    miou = {name: 100 * s[metric] for name, s in runner.scores.items()}
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"one torch thread per job; wall time {wall / 60:.1f} min (jobs run in parallel; reused jobs count 0).",
        "",
        f"Target (toy Cityscapes val, 100 images) {metric} in %, mean ± std over seeds "
        + ", ".join(map(str, seeds))
        + ":",
        "",
        f"| method | {metric} | per seed |",
        "|---|---:|---|",
    ]
    methods = ("source-only", "self-training", "cicld", "oracle")
    if prior:
        methods = ("ldm", *methods)  # the prior itself, before any adaptation
    if zero_shot and all(s in zero_shot for s in seeds):
        values = [zero_shot[s] for s in seeds]
        lines.append(
            f"| zero-shot (the pretrained backbone and its own head) | {mean_std(values)} | "
            f"{', '.join(f'{v:.1f}' for v in values)} |"
        )
    for method in methods:
        values = [miou[f"{method}-s{s}"] for s in seeds]
        label = "zero-shot (the prior's pretrain-ldm)" if method == "ldm" else method
        lines.append(f"| {label} | {mean_std(values)} | {', '.join(f'{v:.1f}' for v in values)} |")
    lines.append("")
    for method in ("cicld", "self-training"):
        gains = [miou[f"{method}-s{s}"] - miou[f"source-only-s{s}"] for s in seeds]
        ratios = [100 * miou[f"{method}-s{s}"] / miou[f"oracle-s{s}"] for s in seeds]
        lines.append(f"{method} − source-only: {mean_std(gains)} mIoU; {method} / oracle: {mean_std(ratios)} %.  ")
        if zero_shot and all(s in zero_shot for s in seeds):
            above = [miou[f"{method}-s{s}"] - zero_shot[s] for s in seeds]
            lines.append(f"{method} − zero-shot: {mean_std(above)} mIoU.  ")
    lines.append("")
    sweep = [steps for steps in runner.steps_sweep if all(f"cicld-s{s}-S{steps}" in miou for s in seeds)]
    if sweep:
        lines += [
            "CICLD (adapted) on the target val by DDIM steps S at inference (`cicld evaluate --steps S`; "
            "the model's default is S = 1):",
            "",
            f"| S | {metric} | per seed |",
            "|---:|---:|---|",
        ]
        for steps in sweep:
            values = [miou[f"cicld-s{s}-S{steps}"] for s in seeds]
            lines.append(f"| {steps} | {mean_std(values)} | {', '.join(f'{v:.1f}' for v in values)} |")
        lines.append("")
    first, table_seeds = seeds[0], seeds[:table_seeds]
    tail = lambda seed: "" if seed == first else f"-s{seed}"  # noqa: E731
    over = f"seed {first}" if len(table_seeds) == 1 else "mean ± std over seeds " + ", ".join(map(str, table_seeds))
    if "table1" in tables:
        lines += [
            f"Table 1 ({over}): conditioning × inter-coder connection, CICLD adapt {metric}",
            "",
            "| | unconditioned | conditioned |",
            "|---|---:|---:|",
        ]
        name = lambda c, i, s: f"cicld-s{s}" if (c and i) else f"cicld-cond{c}-ic{i}{tail(s)}"  # noqa: E731
        for ic, label in ((0, "without inter-coder connection"), (1, "with inter-coder connection")):
            cells = [mean_std([miou[name(c, ic, s)] for s in table_seeds]) for c in (0, 1)]
            lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
        lines.append("")
    if "table2" in tables:
        lines += [
            f"Table 2 ({over}): objectives of `adapt`, from the same pretrain-ldm model",
            "",
            f"| objective | flags | {metric} | per seed |",
            "|---|---|---:|---|",
        ]
        rows = [
            ("CE + diffusion loss, no adversarial", "--adversarial none", "ce-only{}"),
            ("CE + 2-class adversarial", "--adversarial 2class", "adv-2class{}"),
            ("CE + 3-class adversarial (CICLD)", "(default)", None),
            ("CE + 3-class adversarial + CL", "--contrastive", "adv-3class-cl{}"),
            ("CE + 3-class adversarial + MMD", "--mmd", "adv-3class-mmd{}"),
        ]
        for label, flags, job in rows:
            values = [miou[f"cicld-s{s}" if job is None else job.format(tail(s))] for s in table_seeds]
            lines.append(f"| {label} | `{flags}` | {mean_std(values)} | {', '.join(f'{v:.1f}' for v in values)} |")
        lines.append("")
    lines += [f"Per-class IoU (seed {first}):", "", "| class | source-only | CICLD | oracle |", "|---|---:|---:|---:|"]
    for c in CLASSES:
        cells = [runner.scores[f"{m}-s{first}"]["per_class_iou"][c] for m in ("source-only", "cicld", "oracle")]
        lines.append(f"| {c} | " + " | ".join("n/a" if v is None else f"{100 * v:.1f}" for v in cells) + " |")
    if runner.seconds:
        lines += ["", "Job times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in runner.seconds.items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/uda_toy"))
    parser.add_argument("--data", type=Path, default=None, help="a toy pair (default: <out>/data, generated)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--tables", default="table1,table2", help="ablations to run besides main (comma-separated, or none)"
    )
    parser.add_argument(
        "--table-seeds", type=int, default=1, help="run the tables on the first N seeds (N > 1: mean ± std)"
    )
    parser.add_argument("--jobs", type=int, default=2, help="training runs at once (one torch thread each)")
    parser.add_argument(
        "--quick", action="store_true", help="a few steps per job on a tiny pair: checks the plumbing only"
    )
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument(
        "--pair-seed", type=int, default=0, help="seed of the generated toy pair (another seed: a pair not tuned on)"
    )
    parser.add_argument(
        "--source-format",
        choices=("gta5", "synthia"),
        default="gta5",
        help="the format the generated pair's source is written in (synthia: scored in mIoU16)",
    )
    parser.add_argument(
        "--steps-sweep",
        default="0,1,2,10",
        help="DDIM steps S to evaluate the CICLD models at (comma-separated, or none)",
    )
    parser.add_argument(
        "--prior",
        type=int,
        default=0,
        metavar="FRAMES",
        help="start from a toy prior: pretrain-ldm on this many generic-world frames (0: from the source, as shipped)",
    )
    parser.add_argument(
        "--prior-steps", type=int, default=1500, help="pretrain-ldm steps on the generic world (with --prior)"
    )
    parser.add_argument(
        "--finetune-lr",
        type=float,
        default=1e-4,
        help="adapt's learning rate from the prior, the oracle's excepted (with --prior)",
    )
    parser.add_argument("--backbone", help="pretrain-ae's --backbone (a folder or a hub id; {seed} becomes each seed)")
    parser.add_argument("--ldm-flags", default="", help="extra flags for every pretrain-ldm job, as one string")
    parser.add_argument("--adapt-flags", default="", help="extra flags for every adapt job, as one string")
    args = parser.parse_args()
    if args.prior and args.source_format != "gta5":
        parser.error("--prior writes the generic world in the GTA5 format: use it with --source-format gta5")
    tables = {t for t in args.tables.split(",") if t and t != "none"}
    data = args.data or args.out / "data"
    started = time.perf_counter()
    sweep = tuple(int(v) for v in args.steps_sweep.split(",") if v and v != "none")
    runner = Runner(args.out, data, args.quick, sweep, args.source_format)
    if args.data is None:
        args.out.mkdir(parents=True, exist_ok=True)
        size = ["--size=64x32"] if args.quick else []
        runner.cicld(
            "prepare-data",
            "toy",
            str(data),
            "-j",
            str(args.jobs),
            f"--seed={args.pair_seed}",
            *size,
            f"--source-format={args.source_format}",
            *([f"--generic={args.prior}"] if args.prior else []),
            log=args.out / "prepare.log",
        )
    jobs = plan(args.seeds, tables, args.table_seeds)
    if args.prior:
        steps = 3 if args.quick else args.prior_steps
        jobs = with_prior(jobs, steps, args.finetune_lr)
    jobs = with_backbone(jobs, args.backbone, shlex.split(args.ldm_flags), shlex.split(args.adapt_flags))
    run_all(runner, jobs, args.jobs)
    command = "PYTHONPATH=. python benchmarks/uda_toy.py " + shlex.join(sys.argv[1:])
    zero_shot = backbone_zero_shot(args.backbone, args.seeds)
    text = report(
        runner,
        args.seeds,
        tables,
        command,
        time.perf_counter() - started,
        args.table_seeds,
        bool(args.prior),
        zero_shot,
    )
    markdown = args.markdown or args.out / "uda_toy.md"
    markdown.write_text(text)
    (args.out / "results.json").write_text(json.dumps({"scores": runner.scores, "seconds": runner.seconds}, indent=2))
    print(text)


if __name__ == "__main__":
    main()
