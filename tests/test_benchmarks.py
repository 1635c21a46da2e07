"""The toy UDA benchmark's plumbing: every job runs, is scored and lands in the report.

`--quick` trains each job for a few steps on a 64×32 pair, so the scores mean nothing; what is
checked is that the script runs the real commands end to end, reuses finished jobs, and writes a
report whose every number comes from a scores file.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def benchmark_module(name: str):
    """A script of benchmarks/ imported as a module (the folder is no package)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def run_benchmark(out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "uda_toy.py"),
        "--out",
        str(out),
        "--quick",
        "--seeds",
        "0",
        "1",
        "--jobs",
        "2",
    ]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=1200)


@pytest.mark.slow
def test_uda_toy_benchmark_runs_every_job_and_reports_them(tmp_path):
    out = tmp_path / "bench"
    done = run_benchmark(out)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = (out / "uda_toy.md").read_text()
    scores = json.loads((out / "results.json").read_text())["scores"]
    expected = {f"{m}-s{s}" for m in ("ldm", "source-only", "self-training", "cicld", "oracle") for s in (0, 1)}
    expected |= {f"cicld-s{s}-S{steps}" for s in (0, 1) for steps in (0, 1, 2, 10)}
    expected |= {f"{p}-cond{c}-ic{i}" for p in ("ldm", "cicld") for c, i in ((0, 0), (0, 1), (1, 0))}
    expected |= {"ce-only", "adv-2class", "adv-3class-cl", "adv-3class-mmd"}
    assert set(scores) == expected
    # Every table row quotes a scores file: the source-only row is those two runs' mean ± std.
    values = [100 * scores[f"source-only-s{s}"]["mIoU19"] for s in (0, 1)]
    row = re.search(r"^\| source-only \| (\S+) ± (\S+) \|", report, re.MULTILINE)
    assert row is not None and float(row.group(1)) == pytest.approx(sum(values) / 2, abs=0.051)
    assert "Table 1" in report and "Table 2" in report
    # The S sweep's default (S = 1) is the main CICLD run evaluated again: the same scores.
    assert scores["cicld-s0-S1"]["mIoU19"] == scores["cicld-s0"]["mIoU19"]
    assert re.search(r"^\| 10 \| ", report, re.MULTILINE)
    # A re-run trains nothing: every job is found finished and scored.
    again = run_benchmark(out)
    assert again.returncode == 0
    assert "Job times" not in (out / "uda_toy.md").read_text()


def first_command(runner, job) -> tuple[str, ...]:
    """The `cicld` command line ``runner`` starts ``job`` with (nothing is run)."""
    commands = []

    class Stop(Exception):
        pass

    def record(*args, log):
        commands.append(args)
        raise Stop

    runner.cicld = record
    with pytest.raises(Stop):
        runner.run(job)
    return commands[0]


def test_the_tables_run_on_the_first_table_seeds_each_from_its_own_seeds_models():
    uda_toy = benchmark_module("uda_toy")
    one = {job.name: job for job in uda_toy.plan([0, 1], {"table1", "table2"}, table_seeds=1)}
    two = {job.name: job for job in uda_toy.plan([0, 1], {"table1", "table2"}, table_seeds=2)}
    # The first seed's table jobs keep their names, so a benchmark folder from before is reused.
    assert {"ce-only", "adv-2class", "cicld-cond0-ic0", "ldm-cond1-ic0"} <= set(one)
    assert not any(name.endswith("-s1") and ("cond" in name or name.startswith(("ce-", "adv-"))) for name in one)
    extra = set(two) - set(one)
    assert extra == {
        *(f"{p}-cond{c}-ic{i}-s1" for p in ("ldm", "cicld") for c, i in ((0, 0), (0, 1), (1, 0))),
        "ce-only-s1",
        "adv-2class-s1",
        "adv-3class-cl-s1",
        "adv-3class-mmd-s1",
    }
    # Each starts from its own seed's models and trains with its own seed.
    assert two["ce-only-s1"].after == "ldm-s1" and "--seed=1" in two["ce-only-s1"].flags
    assert two["ldm-cond0-ic1-s1"].after == "ae-s1"
    assert two["cicld-cond0-ic1-s1"].after == "ldm-cond0-ic1-s1"


def test_the_synthia_format_benchmark_trains_every_stage_on_the_synthia_copy_and_scores_mIoU16(tmp_path):
    uda_toy = benchmark_module("uda_toy")
    runner = uda_toy.Runner(tmp_path / "out", tmp_path / "pair", quick=False, source_format="synthia")
    command = first_command(runner, uda_toy.Job("ae-s0", "pretrain-ae", ["--seed=0"]))
    assert command[:3] == ("pretrain-ae", "--source=synthia", "--recipe=toy")
    assert f"--source-root={tmp_path / 'pair' / 'synthia'}" in command
    assert runner.metric == "mIoU16"


def test_with_a_prior_pretrain_ldm_trains_on_the_generic_world_and_adapt_fine_tunes(tmp_path):
    uda_toy = benchmark_module("uda_toy")
    jobs = {job.name: job for job in uda_toy.with_prior(uda_toy.plan([0], set()), steps=1500, finetune_lr=1e-4)}
    assert jobs["ldm-s0"].data == "generic" and "--steps=1500" in jobs["ldm-s0"].flags
    assert jobs["ae-s0"].data is None and jobs["ae-s0"].flags == ["--seed=0"]  # the autoencoder stays on the source
    for name in ("source-only-s0", "self-training-s0", "cicld-s0"):
        assert jobs[name].data is None and "--lr=0.0001" in jobs[name].flags
    assert not any(flag.startswith("--lr") for flag in jobs["oracle-s0"].flags)  # the oracle keeps the recipe's rate
    runner = uda_toy.Runner(tmp_path / "out", tmp_path / "pair", quick=False)
    runner.finals["ae-s0"] = tmp_path / "ae"
    command = first_command(runner, jobs["ldm-s0"])
    assert f"--source-root={tmp_path / 'pair' / 'generic'}" in command
    assert f"--target-root={tmp_path / 'pair' / 'cityscapes'}" in command


def test_on_a_backbone_each_seeds_autoencoder_loads_its_own_and_the_later_stages_get_their_flags(tmp_path):
    uda_toy = benchmark_module("uda_toy")
    plan = uda_toy.plan([0, 1], set())
    jobs = {
        j.name: j
        for j in uda_toy.with_backbone(plan, "bb/s{seed}", ["--feature-distance=0.1"], ["--backbone-lr-mult=0.1"])
    }
    assert jobs["ae-s1"].flags == ["--seed=1", "--backbone=bb/s1"]
    assert jobs["ldm-s0"].flags == ["--seed=0", "--feature-distance=0.1"]
    for method in ("source-only", "self-training", "cicld", "oracle"):
        assert jobs[f"{method}-s1"].flags[-1] == "--backbone-lr-mult=0.1"
    assert uda_toy.with_backbone(plan, None, [], []) == plan  # nothing asked, nothing changed


def test_the_backbones_zero_shot_score_is_read_from_the_report_beside_it(tmp_path):
    uda_toy = benchmark_module("uda_toy")
    for seed, score in ((0, 31.5), (1, 29.0)):
        (tmp_path / f"s{seed}").mkdir()
        (tmp_path / f"s{seed}" / "report.json").write_text(json.dumps({"zero_shot_target_val": {"miou19": score}}))
    assert uda_toy.backbone_zero_shot(str(tmp_path / "s{seed}" / "backbone"), [0, 1, 2]) == {0: 31.5, 1: 29.0}


# ---------------------------------------------------------------- benchmarks/pseudo_label_ladder.py
def test_the_ladder_swaps_the_teachers_labels_for_the_truth_as_asked():
    ladder = benchmark_module("pseudo_label_ladder")
    pseudo, truth = torch.tensor([[0, 1, 2, 3]]), torch.tensor([[0, 2, 2, 255]])
    weight = torch.full((1, 4), 0.1)
    labels, weights = ladder.swap_labels("correct", "teacher", pseudo, weight, truth)
    assert labels.tolist() == [[0, 255, 2, 255]] and torch.equal(weights, weight)  # wrong ones ignored
    labels, weights = ladder.swap_labels("truth", "one", pseudo, weight, truth)
    assert torch.equal(labels, truth) and torch.equal(weights, torch.ones_like(weight))
    labels, weights = ladder.swap_labels("teacher", "teacher", pseudo, weight, truth)
    assert torch.equal(labels, pseudo) and torch.equal(weights, weight)


def test_the_ladder_without_classmix_trains_on_the_target_and_puts_adapts_parts_back():
    import cicld.training.adapt as adapt_module
    import cicld.training.objectives as objectives_module
    from cicld.models.losses import segmentation_loss

    ladder = benchmark_module("pseudo_label_ladder")
    shipped = adapt_module.mix, adapt_module.target_dataset, objectives_module.segmentation_loss
    config = type("Config", (), {"mix_jitter_p": 0.0, "mix_blur_p": 0.0})()
    source = {"image": torch.zeros(2, 3, 4, 4), "label": torch.zeros(2, 4, 4, dtype=torch.long)}
    target = {"image": torch.randn(2, 3, 4, 4), "label": torch.randint(0, 19, (2, 4, 4))}
    pseudo, weight = torch.randint(0, 19, (2, 4, 4)), torch.full((2, 4, 4), 0.2)
    logits, class_weight = torch.randn(2, 19, 4, 4), torch.rand(19) + 0.5
    with ladder.swapped_adapt("truth", "one", class_weighted_mix=True, source_loss=False, classmix=False):
        images, labels, weights = adapt_module.mix(source, target, pseudo, weight, config, torch.Generator())
        assert torch.equal(images, target["image"]) and torch.equal(labels, target["label"])
        assert torch.equal(weights, torch.ones_like(weight))
        source_loss = objectives_module.segmentation_loss(logits, target["label"], class_weight=class_weight)
        mixed_loss = objectives_module.segmentation_loss(logits, labels, pixel_weight=weights)
    assert source_loss.item() == 0.0
    assert mixed_loss.item() == pytest.approx(segmentation_loss(logits, labels, class_weight=class_weight).item())
    assert (adapt_module.mix, adapt_module.target_dataset, objectives_module.segmentation_loss) == shipped


def test_the_ladder_runs_the_real_adapt_on_the_truth(toy_root, pretrained_runs, tmp_path):
    import shutil

    from cicld.training.runs import stage_runs

    from conftest import stage_flags

    runs = tmp_path / "runs"
    shutil.copytree(pretrained_runs, runs, symlinks=True)
    flags = [str(f) for f in stage_flags(toy_root, runs)]
    code = benchmark_module("pseudo_label_ladder").main(
        [
            "adapt",
            "--labels",
            "truth",
            "--weight",
            "one",
            "--class-weighted-mix",
            "--",
            *flags,
            "--method",
            "self-training",
        ]
    )
    assert code == 0
    (run,) = stage_runs(runs, "adapt")
    assert (run / "final" / "model.safetensors").is_file()


def test_the_ladders_stats_score_a_models_pseudo_labels_per_class(toy_root, pretrained_runs, tmp_path, capsys):
    out = tmp_path / "stats.json"
    assert (
        benchmark_module("pseudo_label_ladder").main(
            [
                "stats",
                str(pretrained_runs / "latest"),
                "--data",
                str(toy_root / "cityscapes"),
                "--frames",
                "2",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    stats = json.loads(out.read_text())
    assert 0.0 <= stats["confident_share"] <= 1.0 and 0.0 <= stats["pixel_accuracy"] <= 1.0
    shares = [c["share"] for c in stats["classes"].values()]
    assert sum(shares) == pytest.approx(1.0)  # every labelled pixel counted once
    assert "most often taken for" in capsys.readouterr().out


# ---------------------------------------------------------------- benchmarks/speed.py
def test_the_speed_benchmark_refuses_to_measure_nothing():
    command = [sys.executable, str(REPO / "benchmarks" / "speed.py"), "--no-cpu", "--no-cuda"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "nothing to measure" in result.stderr.splitlines()[-1]


def test_the_speed_benchmark_trains_only_backbones_it_also_measures():
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "speed.py"),
        "--backbones",
        "facebook/dinov2-base",
        "--train-backbones",
        "facebook/dinov2-small",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--train-backbones: each must be one of --backbones" in result.stderr.splitlines()[-1]


def test_the_speed_benchmark_times_a_fast_call_back_to_back_and_a_slow_one_alone(monkeypatch):
    speed = benchmark_module("speed")
    counts = {"fast": 0, "slow": 0}

    def make_runner(spec, models):
        def run():
            counts[spec["name"]] += 1
            if spec["name"] == "slow":  # about a sample's length: warmed up twice, then one call a sample
                busy_until = speed.time.perf_counter() + speed.MIN_SAMPLE_SECONDS
                while speed.time.perf_counter() < busy_until:
                    pass

        return run

    monkeypatch.setattr(speed, "make_runner", make_runner)
    timed = speed.time_rows([{"name": "fast"}, {"name": "slow"}], repeats=2)
    fast_calls, slow_calls = timed["calls"]
    assert fast_calls > 1 and slow_calls == 1
    assert counts == {"fast": 2 + 2 * fast_calls, "slow": 2 + 2}  # two warm-up calls, then the rounds
    assert timed["seconds"][0] < timed["seconds"][1]


def test_the_speed_benchmark_times_a_call_of_seconds_once_per_sample_after_one_warm_up(monkeypatch):
    speed = benchmark_module("speed")
    monkeypatch.setattr(speed, "MIN_SAMPLE_SECONDS", 0.01)  # so 0.06 s counts as a slow (CPU-like) call
    counts = {"calls": 0}

    def make_runner(spec, models):
        def run():
            counts["calls"] += 1
            busy_until = speed.time.perf_counter() + 0.06
            while speed.time.perf_counter() < busy_until:
                pass

        return run

    monkeypatch.setattr(speed, "make_runner", make_runner)
    timed = speed.time_rows([{"name": "slow"}], repeats=3)
    assert timed["calls"] == [1] and counts["calls"] == 1 + 3


@pytest.mark.slow
def test_the_compile_benchmark_times_eager_and_compiled_inference_and_checks_they_agree():
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO / "benchmarks" / "compile_cpu.py"), "--preset", "tiny", "--size", "64x64"]
    process = subprocess.run([*command, "--repeats", "1"], capture_output=True, text=True, env=env, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    (row,) = [line for line in process.stdout.splitlines() if line.startswith("| tiny |")]
    eager, compiled, ratio, _, difference = (float(cell) for cell in row.strip("|").split("|")[2:])
    assert ratio == pytest.approx(compiled / eager, abs=0.01)  # the ratio of the times it printed
    assert difference < 1e-4  # the compiled model computes what the eager one does
