"""The three training stages on a tiny toy pair: they run, resume exactly, and fail clearly."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from cicld.errors import CicldError
from cicld.models import CICLD, CICLDConfig
from cicld.models.patch_discriminator import PatchDiscriminator
from cicld.training import loop
from cicld.training import pretrain_ldm as ldm_stage
from cicld.training.adapt import adapt
from cicld.training.common import build_optimizer, oracle_dataset, source_dataset
from cicld.training.config import TRACKERS, make_config
from cicld.training.objectives import AutoencoderObjective, SegmentationObjective
from cicld.training.pretrain_ldm import pretrain_ldm
from cicld.training.runs import RunLock, stage_runs
from cicld.training.session import Session

from conftest import REPO, free_port, run_or_show_where_it_hangs, stage_flags


def test_pretrain_ae_exports_a_model_but_leaves_runs_latest_alone(pretrained_runs):
    (run,) = stage_runs(pretrained_runs, "pretrain-ae")
    assert (run / "final" / "config.json").is_file() and (run / "final" / "model.safetensors").is_file()
    assert (run / "log.csv").read_text().startswith("step,l1,kl")
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000002"]


def test_pretrain_ldm_starts_from_the_autoencoder_and_becomes_runs_latest(pretrained_runs):
    (ae_run,) = stage_runs(pretrained_runs, "pretrain-ae")
    (ldm_run,) = stage_runs(pretrained_runs, "pretrain-ldm")
    assert json.loads((ldm_run / "config.json").read_text())["init_from"] == str(ae_run / "final")
    assert (pretrained_runs / "latest").resolve() == (ldm_run / "final").resolve()
    # With --no-train-encoder, E stays as the autoencoder left it while the UNet trains.
    ae = load_file(ae_run / "final" / "model.safetensors")
    ldm = load_file(ldm_run / "final" / "model.safetensors")
    assert all(torch.equal(ae[k], ldm[k]) for k in ae if k.startswith("encoder."))
    assert not all(torch.equal(ae[k], ldm[k]) for k in ae if k.startswith("unet."))


def test_the_exported_model_folder_holds_the_settings_to_run_it(pretrained_runs):
    (run,) = stage_runs(pretrained_runs, "pretrain-ldm")
    exported = json.loads((run / "final" / "config.json").read_text())
    trained = json.loads((run / "config.json").read_text())
    assert trained["target_resize"] is None and exported["input_size"] is None  # the toy recipe: images as they are
    assert exported["image_mean"] == [0.485, 0.456, 0.406] and exported["image_std"] == [0.229, 0.224, 0.225]
    assert exported["sliding_window"] == [512, 512] and exported["sliding_overlap"] == [128, 128]
    assert exported["inference_steps"] == 1


@pytest.mark.parametrize("method", ["cicld", "self-training", "source-only", "oracle"])
def test_adapt_runs_each_method_and_reports_a_target_miou(cli, toy_root, pretrained_runs, tmp_path, method):
    runs = tmp_path / "runs"
    shutil.copytree(pretrained_runs, runs, symlinks=True)
    result = cli("adapt", *stage_flags(toy_root, runs), "--method", method)
    assert result.exit_code == 0, result.stderr
    assert "target val mIoU19" in result.stdout
    (run,) = stage_runs(runs, "adapt")
    assert (runs / "latest").resolve() == (run / "final").resolve()


@pytest.mark.parametrize("adversarial", ["2class", "none"])
def test_adapt_ablation_switches_run(cli, toy_root, pretrained_runs, tmp_path, adversarial):
    runs = tmp_path / "runs"
    shutil.copytree(pretrained_runs, runs, symlinks=True)
    result = cli("adapt", *stage_flags(toy_root, runs), "--adversarial", adversarial, "--contrastive", "--mmd")
    assert result.exit_code == 0, result.stderr
    with (stage_runs(runs, "adapt")[0] / "log.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row["cl"]]  # the logged steps
    assert rows and all(float(row["cl"]) > 0 and float(row["mmd"]) >= 0 for row in rows)
    if adversarial == "none":  # no adversarial term, and f_dis learns nothing
        assert "adv" not in rows[0] and all(float(row["dis"]) == 0.0 for row in rows)
    else:
        assert all(float(row["dis"]) > 0 and row["adv"] for row in rows)


def test_self_training_baseline_trains_without_the_diffusion_model_and_predicts_with_s0(
    cli, toy_root, pretrained_runs, tmp_path
):
    runs = tmp_path / "runs"
    shutil.copytree(pretrained_runs, runs, symlinks=True)
    result = cli("adapt", *stage_flags(toy_root, runs), "--method", "self-training")
    assert result.exit_code == 0, result.stderr
    (run,) = stage_runs(runs, "adapt")
    assert (run / "log.csv").read_text().splitlines()[0].split(",")[:3] == ["step", "ce_source", "ce_mixed"]
    start = load_file(stage_runs(runs, "pretrain-ldm")[0] / "final" / "model.safetensors")
    final = load_file(run / "final" / "model.safetensors")
    assert all(torch.equal(start[k], final[k]) for k in start if k.startswith(("unet.", "discriminator.")))
    assert not all(torch.equal(start[k], final[k]) for k in start if k.startswith("encoder."))
    assert CICLD.from_pretrained(run / "final").config.inference_steps == 0


def test_adapt_with_2class_adversarial_trains_a_2_output_discriminator(cli, toy_root, pretrained_runs, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(pretrained_runs, runs, symlinks=True)
    result = cli("adapt", *stage_flags(toy_root, runs), "--adversarial", "2class")
    assert result.exit_code == 0, result.stderr
    (run,) = stage_runs(runs, "adapt")
    model = CICLD.from_pretrained(run / "final")
    assert model.config.discriminator == "2class" and model.discriminator.fc2.out_features == 2
    start = CICLD.from_pretrained(stage_runs(runs, "pretrain-ldm")[0] / "final")
    assert start.discriminator.fc2.out_features == 3  # the default 3-class head was replaced, not reused


@pytest.mark.parametrize("stage", ["pretrain-ldm", "adapt"])
def test_table1_flags_switch_the_inter_coder_connection_and_conditioning_off(
    cli, toy_root, pretrained_runs, tmp_path, stage
):
    runs = tmp_path / "runs"
    shutil.copytree(pretrained_runs, runs, symlinks=True)
    result = cli(stage, *stage_flags(toy_root, runs), "--no-inter-coder", "--no-conditioning")
    assert result.exit_code == 0, result.stderr
    run = max(stage_runs(runs, stage))
    model = CICLD.from_pretrained(run / "final")
    assert not model.config.inter_coder and model.decoder.fusions is None
    assert not model.config.conditioning and model.mask_encoder is None


def test_crop_none_trains_on_whole_images_even_where_the_recipe_crops(cli, toy_root, pretrained_runs, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(pretrained_runs, runs, symlinks=True)
    flags = [str(f) for f in stage_flags(toy_root, runs)]
    flags[flags.index("--crop") + 1] = "none"
    result = cli("adapt", *flags)
    assert result.exit_code == 0, result.stderr
    (run,) = stage_runs(runs, "adapt")
    assert json.loads((run / "config.json").read_text())["crop"] is None


@pytest.mark.parametrize("stage", ["pretrain-ae", "pretrain-ldm", "adapt"])
def test_resize_none_keeps_real_images_as_they_are_and_no_flag_means_the_datasets_size(cli, monkeypatch, stage):
    import cicld.cli.train

    seen = []
    monkeypatch.setattr(cicld.cli.train, "_run_stage", lambda train, config, resume: seen.append(config))
    assert cli(stage, "--source", "gta5", "--source-resize", "none", "--target-resize", "none").exit_code == 0
    assert cli(stage, "--source", "synthia").exit_code == 0
    assert cli(stage, "--source", "gta5", "--target-resize", "800x400").exit_code == 0
    none, default, given = seen
    assert (none.resolved_source_resize, none.resolved_target_resize) == (None, None)
    assert (default.resolved_source_resize, default.resolved_target_resize) == ((1280, 760), (1024, 512))
    assert given.resolved_target_resize == (800, 400) and given.resolved_source_resize == (1280, 720)


def _numel(parameters) -> int:
    return sum(p.numel() for p in parameters)


def _numel_by_rate(groups) -> dict[float, int]:
    """How many weights the optimizer trains at each learning rate (rounded: 1e-3 * 10 is not 1e-2)."""
    at: dict[float, int] = {}
    for group in groups:
        rate = float(f"{group['lr']:.6g}")
        at[rate] = at.get(rate, 0) + _numel(group["params"])
    return at


def test_the_optimizer_gives_the_fresh_heads_head_lr_mult_times_the_learning_rate():
    model = CICLD(CICLDConfig.preset("tiny"))
    model.encoder.requires_grad_(False)  # a frozen part is left out of both groups
    config = make_config("adapt", source="toy", lr=1e-3, head_lr_mult=10.0)
    groups = build_optimizer(SegmentationObjective(model, 1.0), config).param_groups
    assert all(group["lr"] == group["initial_lr"] for group in groups)
    counts, at = model.parameter_counts(), _numel_by_rate(groups)
    assert set(at) == {1e-3, 1e-2} and at[1e-3] == counts["decoder"] + counts["unet"]
    assert at[1e-2] == counts["f_cls"] + counts["inter_coder"] + counts["mask_encoder"] + counts["discriminator"]


def test_parameters_an_objective_adds_to_the_model_train_at_the_base_learning_rate():
    model = CICLD(CICLDConfig.preset("tiny"))
    config = make_config("pretrain-ae", source="toy", lr=1e-3, head_lr_mult=10.0)
    patch_discriminator = PatchDiscriminator()
    groups = build_optimizer(AutoencoderObjective(model, patch_discriminator, None, config), config).param_groups
    counts, at = model.parameter_counts(), _numel_by_rate(groups)
    assert at[1e-3] == counts["encoder"] + counts["decoder"] + counts["unet"] + _numel(patch_discriminator.parameters())
    assert at[1e-2] == counts["total"] - counts["encoder"] - counts["decoder"] - counts["unet"]
    assert set(at) == {1e-3, 1e-2}


def test_without_decay_norms_the_normalisation_layers_get_no_weight_decay_in_groups_of_their_own():
    model = CICLD(CICLDConfig.preset("tiny"))
    config = make_config("adapt", source="toy", lr=1e-3, head_lr_mult=10.0, weight_decay=0.01, decay_norms=False)
    groups = build_optimizer(SegmentationObjective(model, 1.0), config).param_groups
    norms = {id(p) for m in model.modules() if isinstance(m, (nn.GroupNorm, nn.LayerNorm)) for p in m.parameters(False)}
    assert norms
    for group in groups:
        assert group["weight_decay"] == (0.0 if id(group["params"][0]) in norms else 0.01)
        assert len({id(p) in norms for p in group["params"]}) == 1  # a group is all norms or none
    assert {(g["lr"], g["weight_decay"]) for g in groups} == {(1e-3, 0.01), (1e-3, 0.0), (1e-2, 0.01), (1e-2, 0.0)}
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len([p for p in model.parameters() if p.requires_grad])  # each once
    default = dataclasses.replace(config, decay_norms=True)
    decayed = build_optimizer(SegmentationObjective(model, 1.0), default).param_groups
    assert [g["weight_decay"] for g in decayed] == [0.01, 0.01]  # --decay-norms: two groups, as before the flag


def _config(stage, toy_root, runs, steps, **extra):
    return make_config(
        stage,
        source="toy",
        source_root=str(toy_root / "gta5"),
        target_root=str(toy_root / "cityscapes"),
        runs_root=str(runs),
        steps=steps,
        crop=(32, 32),
        batch_size=2,
        val_limit=2,
        checkpoint_every=2,
        warmup_steps=1,
        keep_checkpoints=5,
        **extra,
    )


def _adapt_config(toy_root, runs, steps):
    return _config("adapt", toy_root, runs, steps)


def _crash_after(crash_step):
    def on_step(step, row):
        if step == crash_step:
            raise KeyboardInterrupt  # killed between checkpoints: this step's work is lost

    return on_step


def _same_weights(a: Path, b: Path) -> bool:
    a, b = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_interrupted_adapt_run_resumed_from_latest_ends_bit_identical(toy_root, pretrained_runs, tmp_path):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    for runs in (straight, interrupted):
        shutil.copytree(pretrained_runs, runs, symlinks=True)
    expected = adapt(_adapt_config(toy_root, straight, steps=4))

    def crash_after_step_3(step, row):
        if step == 3:
            raise KeyboardInterrupt  # killed between checkpoints: step 3's work is lost, step 2's kept

    with pytest.raises(KeyboardInterrupt):
        adapt(_adapt_config(toy_root, interrupted, steps=4), on_step=crash_after_step_3)
    resumed = adapt(_adapt_config(toy_root, interrupted, steps=4), resume="latest")

    assert resumed.run_dir.parent == interrupted / "adapt"
    a = load_file(expected.final / "model.safetensors")
    b = load_file(resumed.final / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = (resumed.run_dir / "log.csv").read_text()
    assert "\n4," in log


def test_a_resumed_run_accumulates_gradients_as_it_was_started_to(toy_root, pretrained_runs, tmp_path, monkeypatch):
    sessions = []

    class RecordedSession(ldm_stage.Session):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            sessions.append(self)

    monkeypatch.setattr(ldm_stage, "Session", RecordedSession)
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    for runs in (straight, interrupted):
        shutil.copytree(pretrained_runs, runs, symlinks=True)
    expected = pretrain_ldm(_config("pretrain-ldm", toy_root, straight, steps=4, grad_accum_steps=2))
    with pytest.raises(KeyboardInterrupt):
        pretrain_ldm(
            _config("pretrain-ldm", toy_root, interrupted, steps=4, grad_accum_steps=2), on_step=_crash_after(3)
        )
    # As on the command line: the resumed run is named with the defaults, the saved settings win.
    resumed = pretrain_ldm(_config("pretrain-ldm", toy_root, interrupted, steps=4), resume="latest")

    assert sessions[-1].config.grad_accum_steps == 2
    assert sessions[-1].accelerator.gradient_accumulation_steps == 2
    assert _same_weights(expected.final, resumed.final)


def test_every_finished_run_has_a_picture_of_its_log(pretrained_runs):
    from PIL import Image

    from cicld.evaluation.plots import read_log

    for stage in ("pretrain-ae", "pretrain-ldm"):
        (run,) = stage_runs(pretrained_runs, stage)
        assert read_log(run / "log.csv")  # what the picture draws
        with Image.open(run / "curves.png") as picture:
            assert picture.format == "PNG" and picture.size[1] > 200


def test_the_log_of_an_interrupted_and_resumed_run_equals_the_log_of_an_uninterrupted_one(
    toy_root, pretrained_runs, tmp_path
):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    for runs in (straight, interrupted):
        shutil.copytree(pretrained_runs, runs, symlinks=True)
    expected = pretrain_ldm(_config("pretrain-ldm", toy_root, straight, steps=4, log_every=1))
    with pytest.raises(KeyboardInterrupt):  # step 3 is logged, then lost: the checkpoint is step 2's
        pretrain_ldm(_config("pretrain-ldm", toy_root, interrupted, steps=4, log_every=1), on_step=_crash_after(3))
    run = max(stage_runs(interrupted, "pretrain-ldm"))
    assert [line.split(",")[0] for line in (run / "log.csv").read_text().splitlines()] == ["step", "1", "2", "3"]
    resumed = pretrain_ldm(_config("pretrain-ldm", toy_root, interrupted, steps=4), resume="latest")

    log = (resumed.run_dir / "log.csv").read_text()
    assert [line.split(",")[0] for line in log.splitlines()] == ["step", "1", "2", "3", "4", "4"]
    assert log == (expected.run_dir / "log.csv").read_text()


def test_resuming_drops_a_log_row_cut_short_by_a_kill(tmp_path):
    from cicld.training.runlog import truncate_log

    log = tmp_path / "log.csv"
    log.write_text("step,loss,lr\n1,0.5,0.1\n2,0.4,0.1\n3,0.3,0.1\n4,0.")
    truncate_log(log, 2)
    assert log.read_text().splitlines() == ["step,loss,lr", "1,0.5,0.1", "2,0.4,0.1"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_resuming_a_run_stopped_while_exporting_logs_its_final_validation_once(
    toy_root, pretrained_runs, tmp_path, monkeypatch
):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    for runs in (straight, interrupted):
        shutil.copytree(pretrained_runs, runs, symlinks=True)
    expected = pretrain_ldm(_config("pretrain-ldm", toy_root, straight, steps=2, log_every=1))

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt  # after the last checkpoint and the final validation row

    with monkeypatch.context() as patched:
        patched.setattr(Session, "export", killed)
        with pytest.raises(KeyboardInterrupt):
            pretrain_ldm(_config("pretrain-ldm", toy_root, interrupted, steps=2, log_every=1))
    resumed = pretrain_ldm(_config("pretrain-ldm", toy_root, interrupted, steps=2), resume="latest")
    assert (resumed.run_dir / "log.csv").read_text() == (expected.run_dir / "log.csv").read_text()


def test_resuming_a_named_checkpoint_continues_from_exactly_that_step(toy_root, pretrained_runs, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(pretrained_runs, runs, symlinks=True)
    with pytest.raises(KeyboardInterrupt):
        pretrain_ldm(_config("pretrain-ldm", toy_root, runs, steps=5), on_step=_crash_after(5))
    run = max(stage_runs(runs, "pretrain-ldm"))  # the newest: the fixture's finished run is older
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    steps_run = []
    result = pretrain_ldm(
        _config("pretrain-ldm", toy_root, runs, steps=5),
        resume=str(run / "checkpoints" / "step-00000002"),
        on_step=lambda step, row: steps_run.append(step),
    )
    assert steps_run == [3, 4, 5]
    assert result.run_dir == run and (run / "final" / "model.safetensors").is_file()


def test_resuming_a_checkpoint_that_is_not_complete_is_a_clear_error(toy_root, pretrained_runs, tmp_path):
    from cicld.errors import CicldError

    runs = tmp_path / "runs"
    shutil.copytree(pretrained_runs, runs, symlinks=True)
    run = stage_runs(runs, "pretrain-ldm")[0]
    with pytest.raises(CicldError, match=r"step-00000001 is not a complete checkpoint of"):
        pretrain_ldm(
            _config("pretrain-ldm", toy_root, runs, steps=2), resume=str(run / "checkpoints" / "step-00000001")
        )


@pytest.mark.parametrize(
    "stage, previous, switch",
    [("pretrain-ldm", "pretrain-ae", {"inter_coder": False}), ("adapt", "pretrain-ldm", {"adversarial": "2class"})],
    ids=["pretrain-ldm", "adapt"],
)
def test_a_run_resumes_bit_identical_when_the_previous_stages_folder_is_gone(
    toy_root, pretrained_runs, tmp_path, stage, previous, switch
):
    train = {"pretrain-ldm": pretrain_ldm, "adapt": adapt}[stage]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    for runs in (straight, interrupted):
        shutil.copytree(pretrained_runs, runs, symlinks=True)
    expected = train(_config(stage, toy_root, straight, steps=4, **switch))
    with pytest.raises(KeyboardInterrupt):  # after step 3: the checkpoint is step 2's
        train(_config(stage, toy_root, interrupted, steps=4, **switch), on_step=_crash_after(3))
    (started_from,) = stage_runs(interrupted, previous)
    shutil.move(started_from, tmp_path / "moved-away")  # the run's init_from is gone

    resumed = train(_config(stage, toy_root, interrupted, steps=4), resume="latest")
    assert _same_weights(expected.final, resumed.final)
    assert (expected.final / "config.json").read_text() == (resumed.final / "config.json").read_text()
    # The switch the stage applied came from the checkpoint; init_from stays recorded (provenance).
    assert json.loads((resumed.run_dir / "config.json").read_text())["init_from"] == str(started_from / "final")


def test_a_part_a_switch_adds_starts_from_the_runs_seed_whatever_the_process_drew_before(
    toy_root, pretrained_runs, tmp_path
):
    finals = []
    for name in ("first", "second"):
        runs = tmp_path / name
        shutil.copytree(pretrained_runs, runs, symlinks=True)
        torch.rand(100)  # the process's random state differs between the two runs
        finals.append(adapt(_config("adapt", toy_root, runs, steps=1, adversarial="2class")).final)
    assert _same_weights(*finals)  # the fresh 2-class f_dis included


def test_a_checkpoint_without_its_model_config_resumes_from_init_from_or_says_in_one_line_that_it_is_gone(
    cli, toy_root, pretrained_runs, tmp_path
):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    for runs in (straight, interrupted):
        shutil.copytree(pretrained_runs, runs, symlinks=True)
    expected = pretrain_ldm(_config("pretrain-ldm", toy_root, straight, steps=4))
    with pytest.raises(KeyboardInterrupt):
        pretrain_ldm(_config("pretrain-ldm", toy_root, interrupted, steps=4), on_step=_crash_after(3))
    run = max(stage_runs(interrupted, "pretrain-ldm"))
    checkpoint = run / "checkpoints" / "step-00000002"
    (checkpoint / "model_config.json").unlink()  # as an earlier cicld wrote its checkpoints
    (started_from,) = stage_runs(interrupted, "pretrain-ae")
    shutil.move(started_from, tmp_path / "moved-away")

    result = cli("pretrain-ldm", "--source", "toy", "--runs-root", interrupted, "--resume", "latest")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: cannot resume from {checkpoint}: an earlier cicld wrote it without its model's config, so it "
        "needs the model "
        f"the run started from, {started_from / 'final'}, which is no longer there; put that folder back to resume"
    ]
    shutil.move(tmp_path / "moved-away", started_from)
    resumed = pretrain_ldm(_config("pretrain-ldm", toy_root, interrupted, steps=4), resume="latest")
    assert _same_weights(expected.final, resumed.final)


def test_a_nan_loss_stops_the_run_with_a_clear_message_and_keeps_the_last_checkpoint(
    toy_root, pretrained_runs, tmp_path, monkeypatch
):
    from cicld.errors import CicldError
    from cicld.training import objectives

    runs = tmp_path / "runs"
    shutil.copytree(pretrained_runs, runs, symlinks=True)
    original = objectives.UDAObjective.forward
    calls = []

    def poisoned(self, *args):
        losses = original(self, *args)
        calls.append(1)
        if len(calls) == 3:
            losses["ce_source"] = losses["ce_source"] * float("nan")
        return losses

    monkeypatch.setattr(objectives.UDAObjective, "forward", poisoned)
    with pytest.raises(
        CicldError, match=r"diverged at step 2 \(ce_source=nan.*last good checkpoint is .*step-00000002"
    ):
        adapt(_adapt_config(toy_root, runs, steps=4))
    (run,) = stage_runs(runs, "adapt")
    assert not (run / "final").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--batch-size", "9"], "fewer than one batch"),  # the toy source has 8 frames
        (["--crop", "24x24"], "multiples of 16"),  # fails in the first forward pass
    ],
)
def test_a_failed_start_leaves_no_run_folder_to_shadow_the_resumable_run(
    cli, toy_root, pretrained_runs, tmp_path, flags, message
):
    runs = tmp_path / "runs"
    shutil.copytree(pretrained_runs, runs, symlinks=True)
    with pytest.raises(KeyboardInterrupt):
        pretrain_ldm(_config("pretrain-ldm", toy_root, runs, steps=4), on_step=_crash_after(3))
    unfinished = max(stage_runs(runs, "pretrain-ldm"))
    before = sorted((runs / "pretrain-ldm").iterdir())
    result = cli("pretrain-ldm", *stage_flags(toy_root, runs), *flags)
    assert result.exit_code == 2 and message in result.stderr
    assert sorted((runs / "pretrain-ldm").iterdir()) == before
    assert (
        Session(make_config("pretrain-ldm", source="toy", runs_root=str(runs)), resume="latest").run_dir == unfinished
    )


def _interrupt_at(monkeypatch, interrupted_step):
    """Ctrl-C inside the training loop, in optimizer step ``interrupted_step`` (0-based)."""
    original = loop.optimizer_step

    def optimizer_step(session, stage, step):
        if step == interrupted_step:
            raise KeyboardInterrupt
        return original(session, stage, step)

    monkeypatch.setattr(loop, "optimizer_step", optimizer_step)


def test_ctrl_c_in_a_training_stage_prints_one_line_saying_how_to_resume_and_exits_130(
    cli, toy_root, pretrained_runs, tmp_path, monkeypatch
):
    runs = tmp_path / "runs"
    shutil.copytree(pretrained_runs, runs, symlinks=True)
    _interrupt_at(monkeypatch, 2)  # after the checkpoint of step 2
    result = cli("pretrain-ldm", *stage_flags(toy_root, runs, steps=4))
    assert result.exit_code == 130
    run = max(stage_runs(runs, "pretrain-ldm"))
    assert result.stderr.strip().splitlines() == [
        f"error: pretrain-ldm interrupted in step 3; the last checkpoint is {run / 'checkpoints' / 'step-00000002'}: "
        f"continue with `cicld pretrain-ldm --resume {run}` "
        f"(or `cicld pretrain-ldm --resume latest --runs-root {runs}`)"
    ]
    monkeypatch.undo()
    result = cli("pretrain-ldm", "--resume", run)
    assert result.exit_code == 0, result.stderr


def _typed_latest_command(hint: str) -> list[str]:
    """The arguments of the ``(or `cicld ... --resume latest ...`)`` command a Ctrl-C hint prints."""
    import re
    import shlex

    found = re.search(r"\(or `cicld ([^`]*--resume latest[^`]*)`\)$", hint)
    assert found, f"no `cicld ... --resume latest` command in {hint!r}"
    return shlex.split(found.group(1))


@pytest.mark.parametrize("runs_folder", ["default", "elsewhere"])
def test_the_resume_latest_command_the_ctrl_c_hint_prints_works_as_typed(
    cli, toy_root, pretrained_runs, tmp_path, monkeypatch, runs_folder
):
    monkeypatch.chdir(tmp_path)
    runs = Path("runs") if runs_folder == "default" else tmp_path / "elsewhere"
    shutil.copytree(pretrained_runs, runs, symlinks=True)
    with monkeypatch.context() as patched:
        _interrupt_at(patched, 2)  # after the checkpoint of step 2, in a --source toy run
        (hint,) = cli("pretrain-ldm", *stage_flags(toy_root, runs, steps=4)).stderr.strip().splitlines()
    run = max(stage_runs(runs, "pretrain-ldm"))

    typed = _typed_latest_command(hint)
    assert ("--runs-root" in typed) == (runs_folder == "elsewhere")
    result = cli(*typed)  # no --source: the newest resumable run of the stage, whatever its source
    assert result.exit_code == 0, result.stderr
    assert (run / "final" / "model.safetensors").is_file()


def test_the_ctrl_c_hint_offers_resume_latest_only_where_it_names_the_interrupted_run(
    cli, toy_root, pretrained_runs, tmp_path, monkeypatch
):
    runs = tmp_path / "runs"
    older = _unfinished_run(toy_root, pretrained_runs, runs)
    with pytest.raises(KeyboardInterrupt):
        pretrain_ldm(_config("pretrain-ldm", toy_root, runs, steps=4), on_step=_crash_after(3))
    _interrupt_at(monkeypatch, 2)
    (hint,) = cli("pretrain-ldm", "--resume", older).stderr.strip().splitlines()
    assert hint.endswith(f"continue with `cicld pretrain-ldm --resume {older}`")  # latest is the newer run


def test_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(
    cli, toy_root, pretrained_runs, tmp_path, monkeypatch
):
    runs = tmp_path / "runs"
    shutil.copytree(pretrained_runs, runs, symlinks=True)
    _interrupt_at(monkeypatch, 0)
    result = cli("pretrain-ldm", *stage_flags(toy_root, runs, steps=4))
    assert result.exit_code == 130
    assert result.stderr.strip().splitlines() == [
        "error: pretrain-ldm interrupted in step 1, before its first checkpoint: nothing to resume; start it again"
    ]


def _unfinished_run(toy_root, pretrained_runs, runs) -> Path:
    shutil.copytree(pretrained_runs, runs, symlinks=True)
    with pytest.raises(KeyboardInterrupt):
        pretrain_ldm(_config("pretrain-ldm", toy_root, runs, steps=4), on_step=_crash_after(3))
    return max(stage_runs(runs, "pretrain-ldm"))


@pytest.mark.parametrize("stopped", ["interrupted", "diverged"])
def test_resume_latest_skips_newer_runs_stopped_before_their_first_checkpoint(
    cli, toy_root, pretrained_runs, tmp_path, monkeypatch, stopped
):
    runs = tmp_path / "runs"
    resumable = _unfinished_run(toy_root, pretrained_runs, runs)  # its checkpoint is step 2
    if stopped == "interrupted":
        _interrupt_at(monkeypatch, 1)  # in step 2, before the checkpoint of step 2
    else:
        _poison_the_weights_after(monkeypatch, poisoned_step=0)  # step 2's loss is NaN
    assert cli("pretrain-ldm", *stage_flags(toy_root, runs, steps=4)).exit_code in (2, 130)
    monkeypatch.undo()
    newer = stage_runs(runs, "pretrain-ldm")[0]
    assert newer != resumable and (newer / "config.json").is_file() and not (newer / "checkpoints").exists()

    result = cli("pretrain-ldm", "--resume", "latest", "--source", "toy", "--runs-root", runs)
    assert result.exit_code == 0, result.stderr
    assert (resumable / "final" / "model.safetensors").is_file() and not (newer / "final").exists()


@pytest.mark.parametrize("how", ["moved", "copied"])
def test_a_moved_or_copied_run_updates_the_latest_of_the_runs_folder_it_now_sits_in(
    cli, toy_root, pretrained_runs, tmp_path, how
):
    original = tmp_path / "runs"
    run = _unfinished_run(toy_root, pretrained_runs, original)
    latest_before = (original / "latest").resolve()
    there = tmp_path / "elsewhere" / "pretrain-ldm" / run.name
    there.parent.mkdir(parents=True)
    if how == "moved":
        shutil.move(run, there)
        shutil.rmtree(original)  # the runs folder it was started in is gone
    else:
        shutil.copytree(run, there)

    result = cli("pretrain-ldm", "--resume", there)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "elsewhere" / "latest").resolve() == (there / "final").resolve()
    if how == "moved":
        assert not original.exists()
    else:
        assert (original / "latest").resolve() == latest_before and not (run / "final").exists()


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("crop", [0, 0], "--crop 0x0 is too small; use at least 1x1"),
        ("target_resize", [-5, 3], "--target-resize -5x3 is too small; use at least 1x1"),
        ("seed", 2**70, f"--seed must be between 0 and 4294967295, got {2**70}"),
        ("lr", -1, "--lr must be positive, got -1.0"),
    ],
)
def test_a_value_edited_into_a_runs_config_is_refused_in_one_line_before_it_is_resumed(
    cli, toy_root, pretrained_runs, tmp_path, key, value, message
):
    run = _unfinished_run(toy_root, pretrained_runs, tmp_path / "runs")
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**saved, key: value}))
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    result = cli("pretrain-ldm", "--resume", run)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: {run / 'config.json'}: {message}"]
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_a_run_being_trained_refuses_a_second_resume_and_a_dead_trainers_lock_is_taken_over(
    cli, toy_root, pretrained_runs, tmp_path
):
    run = _unfinished_run(toy_root, pretrained_runs, tmp_path / "runs")
    holder = subprocess.Popen(  # another process training the run (it holds the run's lock)
        [
            sys.executable,
            "-c",
            f"from cicld.training.runs import RunLock; lock = RunLock({str(run)!r}).acquire(); "
            "print('locked', flush=True); input()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        for resume in (str(run), "latest"):
            result = cli("pretrain-ldm", "--resume", resume, "--source", "toy", "--runs-root", run.parent.parent)
            assert result.exit_code == 2
            assert result.stderr.strip().splitlines() == [
                f"error: {run} is being trained by another process (pid {holder.pid}); wait for it to end or "
                "stop it, then resume"
            ]
    finally:
        holder.kill()  # kill -9: its lock file stays behind, stale
        holder.wait()
    assert (run / ".lock.pid").read_text().strip() == str(holder.pid)  # left behind, stale
    result = cli("pretrain-ldm", "--resume", run)
    assert result.exit_code == 0, result.stderr
    assert (run / "final" / "model.safetensors").is_file() and not (run / ".lock.pid").exists()
    RunLock(run).acquire().release()  # released


# ---------------------------------------------------------------- --report-to: Accelerate's trackers
def _csv_scalars(log: Path) -> dict[str, list[tuple[int, float]]]:
    """The finite values of each column of a ``log.csv``, as (step, value) pairs."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for row in csv.DictReader(log.open(newline="")):
        for key, value in row.items():
            if key != "step" and value and math.isfinite(float(value)):
                scalars.setdefault(key, []).append((int(row["step"]), float(value)))
    return scalars


def _tensorboard_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard shows of a run's scalars, as (step, value) pairs per tag."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(run / "trackers" / "cicld"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_report_to_tensorboard_writes_what_log_csv_holds_as_event_files_in_the_run_folder(
    cli, toy_root, pretrained_runs, tmp_path
):
    pytest.importorskip("torch.utils.tensorboard")
    import yaml  # an Accelerate dependency: its TensorBoard tracker writes the hyperparameters with it

    runs = tmp_path / "runs"
    shutil.copytree(pretrained_runs, runs, symlinks=True)
    result = cli("pretrain-ldm", *stage_flags(toy_root, runs), "--log-every", "1", "--report-to", "tensorboard")
    assert result.exit_code == 0, result.stderr
    run = max(stage_runs(runs, "pretrain-ldm"))
    assert list((run / "trackers" / "cicld").glob("events.out.tfevents.*"))
    expected = _csv_scalars(run / "log.csv")
    assert set(expected) >= {"diffusion", "lr", "val_miou"}
    shown = _tensorboard_scalars(run)
    assert {tag: [step for step, _ in values] for tag, values in shown.items()} == {
        tag: [step for step, _ in values] for tag, values in expected.items()
    }
    for tag, values in expected.items():
        assert [value for _, value in shown[tag]] == pytest.approx([value for _, value in values], rel=1e-6)
    (hparams,) = (run / "trackers" / "cicld").glob("*/hparams.yml")
    saved = json.loads((run / "config.json").read_text())
    assert yaml.safe_load(hparams.read_text()) == {
        **{k: "x".join(map(str, v)) if isinstance(v, list) else "none" if v is None else v for k, v in saved.items()},
        "run_dir": str(run),
    }


def test_a_resumed_run_drops_the_tensorboard_events_logged_after_its_checkpoint(toy_root, pretrained_runs, tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    for runs in (straight, interrupted):
        shutil.copytree(pretrained_runs, runs, symlinks=True)
    expected = pretrain_ldm(_config("pretrain-ldm", toy_root, straight, steps=4, log_every=1, report_to="tensorboard"))
    with pytest.raises(KeyboardInterrupt):  # step 3 is logged, then lost: the checkpoint is step 2's
        pretrain_ldm(
            _config("pretrain-ldm", toy_root, interrupted, steps=4, log_every=1, report_to="tensorboard"),
            on_step=_crash_after(3),
        )
    resumed = pretrain_ldm(_config("pretrain-ldm", toy_root, interrupted, steps=4), resume="latest")

    shown, straight_shown = _tensorboard_scalars(resumed.run_dir), _tensorboard_scalars(expected.run_dir)
    assert [step for step, _ in shown["lr"]] == [1, 2, 3, 4]
    assert shown == straight_shown


def _not_installed_tracker() -> str | None:
    """A tracker none of whose packages is installed here (Accelerate's TensorBoard tracker also takes tensorboardX)."""
    modules = {"tensorboard": ("tensorboard", "tensorboardX")}
    return next((t for t in TRACKERS if all(importlib.util.find_spec(m) is None for m in modules.get(t, (t,)))), None)


def test_a_tracker_that_is_not_installed_is_a_one_line_error_before_anything_is_created(cli, toy_root, tmp_path):
    tracker = _not_installed_tracker()
    if tracker is None:
        pytest.skip("every tracker is installed here")
    result = cli("adapt", *stage_flags(toy_root, tmp_path / "runs"), "--report-to", tracker)
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: --report-to {tracker}: {tracker} is not installed; `pip install ")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "report_to, message",
    [
        (
            "tensorbord",
            "--report-to must be one of none, all, tensorboard, wandb, mlflow, comet_ml, aim, clearml, dvclive, "
            "got 'tensorbord'",
        ),
        ("all", "--report-to all: none of tensorboard, wandb, mlflow, comet_ml, aim, clearml, dvclive is installed"),
    ],
)
def test_an_unknown_tracker_or_all_with_none_installed_is_a_one_line_error_before_anything_is_created(
    cli, toy_root, tmp_path, monkeypatch, report_to, message
):
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])  # a machine without any tracker
    result = cli("pretrain-ae", *stage_flags(toy_root, tmp_path / "runs"), "--report-to", report_to)
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {message}")
    assert not (tmp_path / "runs").exists()


def test_the_trackers_get_each_logged_row_at_its_step_and_the_runs_config_as_flat_hyperparameters(
    toy_root, pretrained_runs, tmp_path, monkeypatch
):
    from accelerate import Accelerator

    started, logged = [], []
    monkeypatch.setattr(
        Accelerator,
        "init_trackers",
        lambda self, project, config=None, init_kwargs=None: started.append((project, config)),
    )
    monkeypatch.setattr(
        Accelerator, "log", lambda self, values, step=None, log_kwargs=None: logged.append((step, values))
    )
    runs = tmp_path / "runs"
    shutil.copytree(pretrained_runs, runs, symlinks=True)
    result = pretrain_ldm(_config("pretrain-ldm", toy_root, runs, steps=2, log_every=1))

    ((project, hyperparameters),) = started
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert project == "cicld" and hyperparameters["run_dir"] == str(result.run_dir)
    assert hyperparameters["crop"] == "32x32" and hyperparameters["max_grad_norm"] == "none"  # a size, an unset value
    assert hyperparameters["recipe"] == saved["recipe"] == "toy" and hyperparameters["init_from"] == saved["init_from"]
    assert all(isinstance(value, (bool, int, float, str)) for value in hyperparameters.values())
    assert set(hyperparameters) == {*saved, "run_dir"}
    # Every finite value of log.csv, at its step; the NaN val_miou of steps without validation is left out.
    from_trackers: dict[str, list[tuple[int, float]]] = {}
    for step, values in logged:
        for key, value in values.items():
            from_trackers.setdefault(key, []).append((step, value))
    assert from_trackers == _csv_scalars(result.run_dir / "log.csv")


def test_two_runs_started_in_the_same_second_get_their_own_folders_even_in_a_race(tmp_path, monkeypatch):
    from cicld.training import runs as runs_module

    monkeypatch.setattr(runs_module.time, "strftime", lambda pattern: "20261125-120000")
    first = runs_module.new_run_dir(tmp_path, "adapt", "toy")
    # Another process creates the next name between a look and a mkdir: nothing may look first.
    monkeypatch.setattr(Path, "exists", lambda self: False)
    second = runs_module.new_run_dir(tmp_path, "adapt", "toy")
    third = runs_module.new_run_dir(tmp_path, "adapt", "toy")
    monkeypatch.undo()
    assert [first.name, second.name, third.name] == [
        "toy-20261125-120000",
        "toy-20261125-120000-2",
        "toy-20261125-120000-3",
    ]


def test_missing_data_is_a_one_line_hint(cli, tmp_path):
    result = cli(
        "adapt", "--source", "synthia", "--runs-root", tmp_path / "runs", "--source-root", tmp_path / "nowhere"
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nowhere'} does not exist; put the synthia dataset there and run "
        f"`cicld prepare-data synthia {tmp_path / 'nowhere'}`"
    ]


def test_a_missing_pretrained_stage_names_the_command_to_run_first(cli, toy_root, tmp_path):
    result = cli("adapt", *stage_flags(toy_root, tmp_path / "empty-runs"))
    assert result.exit_code == 2
    assert "run `cicld pretrain-ldm --source toy` first" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "empty-runs" / "adapt").exists()  # no half-made run folder is left behind


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--method", "teacher"], "--method must be one of"),
        (["--mixed-precision", "fp8"], "--mixed-precision must be one of"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--crop", "big"], "--crop must look like WIDTHxHEIGHT"),
        (["--resume", "latest", "--steps", "9"], "saved settings; drop --source-root, --target-root, --steps"),
    ],
)
def test_bad_flags_are_one_line_errors(cli, toy_root, tmp_path, flags, message):
    result = cli("adapt", *stage_flags(toy_root, tmp_path / "runs"), *flags)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lr", "inf"], "--lr must be a finite number, got inf"),
        (["--lr", "nan"], "--lr must be a finite number, got nan"),
        (["--lr", "0"], "--lr must be positive, got 0.0"),
        (["--max-grad-norm", "nan"], "--max-grad-norm must be a finite number, got nan"),
        (["--max-grad-norm", "0"], "--max-grad-norm must be positive"),
        (["--weight-decay", "-0.1"], "--weight-decay must be at least 0"),
        (["--ema-alpha", "1.5"], "--ema-alpha must be between 0 and 1, got 1.5"),
        (["--mix-blur-p", "-0.5"], "--mix-blur-p must be between 0 and 1"),
        (["--lambda-adv", "inf"], "--lambda-adv must be a finite number"),
        (["--seed", "-1"], "--seed must be between 0 and 4294967295, got -1"),
        (["--num-workers", "-1"], "--num-workers must be at least 0"),
        (["--keep-checkpoints", "0"], "--keep-checkpoints must be at least 1, got 0"),
        (["--val-limit", "0"], "--val-limit must be at least 1, got 0"),
        (["--zoom-max", "0.5"], "--zoom-max must be at least 1, got 0.5"),
        (["--seed", str(2**70)], f"--seed must be between 0 and 4294967295, got {2**70}"),
        (["--crop", "0x0"], "--crop 0x0 is too small; use at least 1x1"),
        (["--crop", "100000000000000000000x5"], "--crop 100000000000000000000x5 is too large; use at most 16384x16384"),
        (["--target-resize", "20000x16"], "--target-resize 20000x16 is too large; use at most 16384x16384"),
    ],
)
def test_numbers_out_of_range_are_one_line_errors_before_anything_is_created(cli, toy_root, tmp_path, flags, message):
    result = cli("adapt", *stage_flags(toy_root, tmp_path / "runs"), *flags)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}")
    assert not (tmp_path / "runs").exists()


def test_zoom_max_reaches_every_labelled_dataset_and_is_off_by_default(toy_root):
    roots = dict(source="toy", source_root=str(toy_root / "gta5"), target_root=str(toy_root / "cityscapes"))
    assert source_dataset(make_config("adapt", **roots)).zoom_max == 1.0
    zoomed = make_config("adapt", **roots, zoom_max=1.5)
    assert source_dataset(zoomed).zoom_max == 1.5 and oracle_dataset(zoomed).zoom_max == 1.5


def test_the_help_says_the_smallest_keep_checkpoints_and_val_limit(cli):
    lines = " ".join(cli("adapt", "--help").stdout.split())
    assert (
        "--keep-checkpoints <int> how many newest checkpoints to keep, at least 1 (the newest is what --resume "
        "continues)" in lines
    )
    assert "--val-limit <int> validate on at most this many val images, at least 1 (None: all)" in lines


def _poison_the_weights_after(monkeypatch, poisoned_step):
    """Make one parameter NaN right after optimizer step ``poisoned_step`` (0-based) (the losses
    stay finite up to there: only the weights show it)."""
    original = loop.optimizer_step

    def optimizer_step(session, stage, step):
        losses = original(session, stage, step)
        if step == poisoned_step:
            with torch.no_grad():
                next(session.accelerator.unwrap_model(stage.objective).model.unet.parameters()).fill_(float("nan"))
        return losses

    monkeypatch.setattr(loop, "optimizer_step", optimizer_step)


def test_weights_that_became_nan_are_neither_checkpointed_nor_exported(
    cli, toy_root, pretrained_runs, tmp_path, monkeypatch
):
    runs = tmp_path / "runs"
    shutil.copytree(pretrained_runs, runs, symlinks=True)
    latest = (runs / "latest").resolve()
    _poison_the_weights_after(monkeypatch, poisoned_step=3)
    result = cli("pretrain-ldm", *stage_flags(toy_root, runs, steps=4))
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    run = max(stage_runs(runs, "pretrain-ldm"))
    assert (
        "NaN or inf weights after step 4" in line
        and f"the last good checkpoint is {run / 'checkpoints' / 'step-00000002'}" in line
    )
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000002"]
    assert not (run / "final").exists()
    assert (runs / "latest").resolve() == latest


def test_a_model_with_non_finite_weights_is_never_exported(tmp_path):
    from cicld.training.stops import TrainingDiverged

    session = Session(make_config("adapt", source="toy", runs_root=str(tmp_path / "runs")))
    session.open_run()
    model = CICLD(CICLDConfig.preset("tiny"))
    with torch.no_grad():
        model.decoder.f_cls.parameters().__next__().view(-1)[0] = float("inf")
    with pytest.raises(
        TrainingDiverged,
        match="NaN or inf weights in the model to export: final/ was not written.*no checkpoint was written yet",
    ):
        session.export(model, update_latest=True)
    assert not (session.run_dir / "final").exists() and not (tmp_path / "runs" / "latest").exists()


def test_resume_latest_without_an_unfinished_run_is_a_one_line_error(cli, tmp_path):
    result = cli("adapt", "--source", "toy", "--runs-root", tmp_path / "runs", "--resume", "latest")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --resume latest: no unfinished adapt run for --source toy with a checkpoint in {tmp_path / 'runs'}/"
    ]


def test_pretrain_ae_offers_no_starting_model_and_refuses_one(cli, tmp_path):
    # It builds a new model from --preset: --init-from is the later stages' only, in their help too.
    assert "--init-from" not in cli("pretrain-ae", "--help").stdout
    for stage in ("pretrain-ldm", "adapt"):
        assert "--init-from" in cli(stage, "--help").stdout
    result = cli("pretrain-ae", "--source", "toy", "--init-from", tmp_path, "--runs-root", tmp_path / "runs")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == ["error: No such option: --init-from (see `cicld pretrain-ae --help`)"]
    assert not (tmp_path / "runs").exists()


def test_a_pretrain_ae_run_saved_with_init_from_still_loads(pretrained_runs):
    from cicld.training.config import STAGE_CONFIGS

    (run,) = stage_runs(pretrained_runs, "pretrain-ae")
    saved = {**json.loads((run / "config.json").read_text()), "init_from": None}  # as earlier versions wrote it
    assert "init_from" not in STAGE_CONFIGS["pretrain-ae"].from_dict(saved).to_dict()


@pytest.mark.parametrize("stage", ["pretrain-ldm", "adapt"])
def test_the_later_stages_refuse_a_preset_they_would_ignore(cli, tmp_path, stage):
    # They load the previous stage's model, architecture included: --preset is pretrain-ae's only.
    result = cli(stage, "--source", "toy", "--preset", "tiny", "--runs-root", tmp_path / "runs")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--preset" in lines[0]
    assert not (tmp_path / "runs").exists()
    with pytest.raises(CicldError, match=f"{stage} has no option --preset"):
        make_config(stage, source="toy", preset="tiny")


def test_runs_saved_with_the_retired_preset_key_still_load(toy_root, pretrained_runs):
    from cicld.training.config import STAGE_CONFIGS

    (run,) = stage_runs(pretrained_runs, "pretrain-ldm")
    saved = {**json.loads((run / "config.json").read_text()), "preset": "small"}  # as earlier versions wrote it
    loaded = STAGE_CONFIGS["pretrain-ldm"].from_dict(saved).to_dict()
    assert json.loads(json.dumps(loaded)) == json.loads((run / "config.json").read_text())


# ---------------------------------------------------------------- --config: a saved run's settings again; the recipe
_STAGE_FUNCTIONS = {"pretrain-ae": "pretrain_ae", "pretrain-ldm": "pretrain_ldm", "adapt": "adapt"}


@pytest.fixture
def resolved(monkeypatch, tmp_path):
    """``resolved(stage, *flags)``: the config that ``cicld STAGE FLAGS...`` would train with (the
    stage itself is not run)."""
    import importlib

    from cicld.cli import main
    from cicld.training.session import TrainResult

    def run(stage: str, *flags) -> dict:
        configs = []

        def train(config, resume=None, on_step=None):
            configs.append(config)
            return TrainResult(tmp_path, tmp_path, None)

        module = importlib.import_module(f"cicld.training.{_STAGE_FUNCTIONS[stage]}")
        monkeypatch.setattr(module, _STAGE_FUNCTIONS[stage], train)
        with pytest.raises(SystemExit) as exit_info:
            main([stage, *map(str, flags)])
        assert exit_info.value.code == 0
        (config,) = configs
        return json.loads(json.dumps(config.to_dict()))  # as saved: sizes as lists

    return run


def _adapt_config_file(toy_root, pretrained_runs, tmp_path) -> Path:
    """The config an adapt run of the toy flags saves (as ``config.json`` in its run folder)."""
    init = max(stage_runs(pretrained_runs, "pretrain-ldm")) / "final"
    config = _config("adapt", toy_root, pretrained_runs, steps=2, init_from=str(init), seed=3, lambda_adv=0.05)
    path = tmp_path / "adapt-config.json"
    path.write_text(json.dumps(config.to_dict(), indent=2))
    return path


def test_adapt_with_the_config_of_a_run_trains_a_new_run_with_that_runs_settings(
    cli, toy_root, pretrained_runs, tmp_path
):
    runs = tmp_path / "runs"
    shutil.copytree(pretrained_runs, runs, symlinks=True)
    first = cli("adapt", *stage_flags(toy_root, runs), "--seed", "3", "--lambda-adv", "0.05", "--no-class-weights")
    assert first.exit_code == 0, first.stderr
    (run,) = stage_runs(runs, "adapt")

    again = cli("adapt", "--config", run / "config.json")
    assert again.exit_code == 0, again.stderr
    rerun = next(r for r in stage_runs(runs, "adapt") if r != run)
    assert (rerun / "final" / "model.safetensors").is_file()
    assert json.loads((rerun / "config.json").read_text()) == json.loads((run / "config.json").read_text())


@pytest.mark.parametrize("stage", ["pretrain-ae", "pretrain-ldm", "adapt"])
def test_a_saved_config_gives_its_settings_and_only_the_flags_given_override_them(
    resolved, toy_root, pretrained_runs, tmp_path, stage
):
    if stage == "adapt":
        path = _adapt_config_file(toy_root, pretrained_runs, tmp_path)
    else:
        path = max(stage_runs(pretrained_runs, stage)) / "config.json"
    saved = json.loads(path.read_text())
    assert resolved(stage, "--config", path) == saved
    # The flags given win, `none` included; every other setting stays the file's (not a default's).
    overridden = resolved(stage, "--config", path, "--seed", "7", "--crop", "none", "--rare-class-sampling")
    assert overridden == {**saved, "seed": 7, "crop": None, "rare_class_sampling": True}
    assert overridden["steps"] == 2 and overridden["recipe"] == "toy"


def test_a_run_config_records_the_recipe_its_settings_came_from(resolved, pretrained_runs):
    from cicld.training.config import STAGE_CONFIGS

    for stage in ("pretrain-ae", "pretrain-ldm"):
        (run,) = stage_runs(pretrained_runs, stage)
        assert json.loads((run / "config.json").read_text())["recipe"] == "toy"
    assert resolved("adapt", "--source", "toy")["recipe"] == "toy"
    real = resolved("adapt", "--source", "synthia")
    assert real["recipe"] == "default" and real["lr"] == 6e-5 and real["steps"] == 40000
    # A recipe can be named: the toy pair with the real-data recipe, or the toy recipe on real data.
    assert resolved("adapt", "--source", "toy", "--recipe", "default")["lr"] == 6e-5
    assert resolved("adapt", "--source", "gta5", "--recipe", "toy") | {"source": "toy"} == resolved(
        "adapt", "--source", "toy"
    )
    # Runs saved before runs recorded their recipe load with the one they were made with.
    (run,) = stage_runs(pretrained_runs, "pretrain-ldm")
    older = {k: v for k, v in json.loads((run / "config.json").read_text()).items() if k != "recipe"}
    assert STAGE_CONFIGS["pretrain-ldm"].from_dict(older).recipe == "toy"
    assert STAGE_CONFIGS["pretrain-ldm"].from_dict({**older, "source": "gta5"}).recipe == "default"


def test_real_data_starts_from_a_pretrained_backbone_and_the_toy_recipe_from_e_s_own_blocks(resolved, cli):
    from cicld.training.config import DEFAULT_BACKBONE, STAGE_CONFIGS

    for source in ("gta5", "synthia", "pairs"):
        assert resolved("pretrain-ae", "--source", source)["backbone"] == DEFAULT_BACKBONE
    assert resolved("pretrain-ae", "--source", "toy")["backbone"] == "none"
    assert resolved("pretrain-ae", "--source", "gta5", "--backbone", "none")["backbone"] == "none"
    # A run saved before --backbone existed resumes as it ran: on E's own blocks.
    saved = resolved("pretrain-ae", "--source", "gta5")
    older = {k: v for k, v in saved.items() if k != "backbone"}
    assert STAGE_CONFIGS["pretrain-ae"].from_dict(older).backbone == "none"
    assert STAGE_CONFIGS["pretrain-ae"].from_dict(saved).backbone == DEFAULT_BACKBONE
    # An SD-VAE copy initialises E's own blocks, which the default backbone would replace.
    result = cli("pretrain-ae", "--source", "gta5", "--preset", "sd-vae", "--init-autoencoder", "/models/sd-vae")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --init-autoencoder initialises E's own blocks, which the backbone {DEFAULT_BACKBONE} replaces; "
        "add --backbone none to start E from the autoencoder"
    ]


def test_norm_layers_get_no_weight_decay_by_default_as_in_daformer_and_older_runs_resume_as_they_ran(resolved):
    from cicld.training.config import STAGE_CONFIGS

    for stage in ("pretrain-ae", "pretrain-ldm", "adapt"):
        saved = resolved(stage, "--source", "toy")
        assert saved["decay_norms"] is False
        older = {k: v for k, v in saved.items() if k != "decay_norms"}  # saved before the flag
        assert STAGE_CONFIGS[stage].from_dict(older).decay_norms is True
    assert resolved("adapt", "--source", "gta5", "--decay-norms")["decay_norms"] is True


def test_a_resolved_config_is_read_only():
    import dataclasses

    config = make_config("adapt", source="toy")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.init_from = "elsewhere"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "make_file, extra, message",
    [
        (lambda d, runs: d / "missing.json", [], "--config: {file} does not exist"),
        (lambda d, runs: _write(d / "broken.json", '{"stage": "adapt",'), [], "--config: {file} is not valid JSON ("),
        (lambda d, runs: _write(d / "list.json", "[1, 2]"), [], "--config: {file} is not a training run's config"),
        (
            lambda d, runs: max(stage_runs(runs, "pretrain-ldm")) / "final" / "config.json",
            [],
            "--config: {file} is not a training run's config",
        ),
        (
            lambda d, runs: max(stage_runs(runs, "pretrain-ldm")) / "config.json",
            [],
            "--config: {file} is a pretrain-ldm config, not adapt's; use `cicld pretrain-ldm --config {file}`",
        ),
        (
            lambda d, runs: _write(d / "extra.json", '{"stage": "adapt", "colour": "red"}'),
            [],
            "--config: unknown adapt config keys: colour",
        ),
        (
            lambda d, runs: _write(d / "typed.json", '{"stage": "adapt", "steps": "many"}'),
            [],
            "--config: invalid adapt config: steps must be",
        ),
        (
            lambda d, runs: _write(d / "range.json", '{"stage": "adapt", "source": "toy", "steps": 0}'),
            [],
            "--steps must be at least 1, got 0",
        ),
        (lambda d, runs: _write(d / "crop.json", '{"stage": "adapt", "crop": [0, 0]}'), [], "--crop 0x0 is too small"),
        (
            lambda d, runs: _write(d / "resize.json", '{"stage": "adapt", "target_resize": [-5, 3]}'),
            [],
            "--target-resize -5x3 is too small; use at least 1x1",
        ),
        (
            lambda d, runs: _write(d / "seed.json", f'{{"stage": "adapt", "seed": {2**70}}}'),
            [],
            "--seed must be between 0 and 4294967295",
        ),
        (
            lambda d, runs: max(stage_runs(runs, "pretrain-ldm")),
            [],
            "--config: {file} is a folder; give the config file itself: `--config {file}/config.json`",
        ),
        (
            lambda d, runs: _write(d / "ok.json", '{"stage": "adapt"}'),
            ["--recipe", "toy"],
            "--config gives every setting, so no recipe fills any: drop --recipe",
        ),
        (
            lambda d, runs: _write(d / "ok.json", '{"stage": "adapt"}'),
            ["--resume", "latest"],
            "--resume continues a run with its saved settings; drop --config",
        ),
    ],
    ids=[
        "missing",
        "not-json",
        "not-an-object",
        "a-model-config",
        "another-stage",
        "unknown-key",
        "wrong-type",
        "out-of-range",
        "zero-crop",
        "negative-resize",
        "huge-seed",
        "a-run-folder",
        "with-recipe",
        "with-resume",
    ],
)
def test_a_config_file_that_cannot_be_used_is_a_one_line_error_before_anything_is_created(
    cli, pretrained_runs, tmp_path, make_file, extra, message
):
    path = make_file(tmp_path, pretrained_runs)
    result = cli("adapt", "--config", path, "--runs-root", tmp_path / "runs", *extra)
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: " + message.format(file=path)), line
    assert not (tmp_path / "runs").exists()


def test_pretrain_ae_batch_size_is_split_between_the_domains_as_its_help_says(toy_root, tmp_path, monkeypatch):
    import typer

    from cicld.cli import app
    from cicld.training import pretrain_ae as ae_stage

    command = typer.main.get_command(app).commands["pretrain-ae"]
    (help_text,) = [p.help for p in command.params if p.name == "batch_size"]
    assert "half source and half target" in help_text and "per domain" not in help_text
    per_domain = []

    class Stop(Exception):
        pass

    def record(dataset, batch_size, **kwargs):
        per_domain.append(batch_size)
        raise Stop

    monkeypatch.setattr(ae_stage, "step_batches", record)
    with pytest.raises(Stop):
        ae_stage.pretrain_ae(
            make_config(
                "pretrain-ae",
                source="toy",
                source_root=str(toy_root / "gta5"),
                target_root=str(toy_root / "cityscapes"),
                runs_root=str(tmp_path / "runs"),
                steps=1,
                crop=(32, 32),
                batch_size=6,
                preset="tiny",
            )
        )
    assert per_domain == [3]  # 6 images a step: 3 source + 3 target


def test_oracle_trains_on_a_prepared_cityscapes_target_that_no_toy_pair_wrote_and_says_it_is_a_reference(
    cli, toy_root, pretrained_runs, tmp_path
):
    from cicld.data.toy import is_toy_target

    real = tmp_path / "real" / "cityscapes"  # prepared Cityscapes-format data, with no toy pair around it
    shutil.copytree(toy_root / "cityscapes", real)
    assert not is_toy_target(real)
    runs = tmp_path / "runs"
    shutil.copytree(pretrained_runs, runs, symlinks=True)
    flags = [str(f) for f in stage_flags(toy_root, runs)]
    flags[flags.index("--target-root") + 1] = str(real)
    result = cli("adapt", *flags, "--method", "oracle")
    assert result.exit_code == 0, result.stderr
    assert f"--method oracle trained on the target's own labels ({real}): a reference, not adaptation" in " ".join(
        result.stdout.split()
    )
    (run,) = stage_runs(runs, "adapt")
    assert json.loads((run / "config.json").read_text())["method"] == "oracle"


def test_oracle_on_a_target_without_labels_is_one_line_before_anything_is_created(cli, toy_root, tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(toy_root / "cityscapes" / "leftImg8bit", photos)  # images alone: no labels to train on
    result = cli("adapt", *stage_flags(toy_root, tmp_path / "runs"), "--target-root", photos, "--method", "oracle")
    assert result.exit_code == 2 and "--method oracle trains on the target's own labels" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_the_toy_recipe_trains_on_a_toy_pair_written_in_synthias_format_oracle_included(
    cli, toy_root, pretrained_runs, tmp_path
):
    from cicld.data.toy import generate_toy_pair, prepare_toy_pair

    pair = tmp_path / "pair"
    prepare_toy_pair(
        generate_toy_pair(
            pair, size=(64, 32), num_source=4, num_target_train=4, num_target_val=2, source_formats=("synthia",)
        )
    )
    runs = tmp_path / "runs"
    shutil.copytree(pretrained_runs, runs, symlinks=True)
    flags = [str(f) for f in stage_flags(toy_root, runs)]
    flags[flags.index("--source") + 1] = "synthia"
    flags[flags.index("--source-root") + 1] = str(pair / "synthia")
    flags[flags.index("--target-root") + 1] = str(pair / "cityscapes")
    flags[flags.index("--crop") + 1] = "none"
    (source_model,) = stage_runs(runs, "pretrain-ldm")  # the toy-format source's: any starting model will do
    flags += ["--init-from", str(source_model)]
    for method in ("oracle", "cicld"):
        result = cli("adapt", *flags, "--recipe", "toy", "--method", method)
        assert result.exit_code == 0, result.stderr
    for run in stage_runs(runs, "adapt"):
        config = json.loads((run / "config.json").read_text())
        # SYNTHIA's dataset size (1280x760) would have upsampled the 64x32 frames twentyfold.
        assert (config["source"], config["source_resize"], config["target_resize"]) == ("synthia", None, None)


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage, flags",
    [
        ("adapt", []),
        ("adapt", ["--method", "self-training"]),  # ε_θ, f_mask and f_dis sit out
        ("pretrain-ae", []),  # the toy recipe's GAN warm-up: the patch discriminator sits out
    ],
)
def test_two_cpu_processes_train_together_and_write_one_checkpoint(toy_root, pretrained_runs, tmp_path, stage, flags):
    runs = tmp_path / "runs"
    shutil.copytree(pretrained_runs, runs, symlinks=True)
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    command = [*launch, "-m", "cicld.cli", stage, *map(str, stage_flags(toy_root, runs)), "--batch-size", "1", *flags]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = run_or_show_where_it_hangs(command, env, timeout=300)  # it takes 15-60 s
    assert process.returncode == 0, process.stderr[-3000:]
    run = max(stage_runs(runs, stage))  # the new one (pretrained_runs holds a pretrain-ae run already)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000002"]
    assert (run / "final" / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_machines_over_localhost_train_one_run_and_resume_it_to_the_same_weights(
    toy_root, pretrained_runs, tmp_path, launcher
):
    """Two "machines" of one process each, started as docs/gpu-training.md starts them."""
    runs = tmp_path / "runs"
    shutil.copytree(pretrained_runs, runs, symlinks=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

    def on_two_nodes(*flags: str) -> None:
        port = str(free_port())
        if launcher == "torchrun":
            launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"]
            launch += ["--master_addr", "127.0.0.1", "--master_port", port, "--node_rank"]
        else:  # --multi_gpu: Accelerate's launcher across machines (cicld runs it on the CPU without a GPU)
            launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2"]
            launch += ["--num_processes", "2"]
            launch += ["--main_process_ip", "127.0.0.1", "--main_process_port", port, "--machine_rank"]
        node = [[*launch, str(rank), "-m", "cicld.cli", "adapt", *flags] for rank in (0, 1)]
        second = subprocess.Popen(node[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            first = run_or_show_where_it_hangs(node[0], env, timeout=300)
            _, second_stderr = second.communicate(timeout=120)
        finally:
            second.kill()
            second.wait()
        assert first.returncode == 0, first.stderr[-3000:]
        assert second.returncode == 0, second_stderr[-3000:]

    on_two_nodes(*map(str, stage_flags(toy_root, runs, steps=4)), "--batch-size", "1")
    (run,) = stage_runs(runs, "adapt")  # one world: one run folder
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    assert (runs / "latest").resolve() == (run / "final").resolve()
    config = json.loads((run / "config.json").read_text())
    weights, log = load_file(run / "final" / "model.safetensors"), (run / "log.csv").read_text()

    on_two_nodes("--resume", str(run / "checkpoints" / "step-00000002"))
    assert stage_runs(runs, "adapt") == [run]  # continued, not a new run
    assert json.loads((run / "config.json").read_text()) == config
    resumed = load_file(run / "final" / "model.safetensors")
    assert resumed.keys() == weights.keys() and all(torch.equal(resumed[k], weights[k]) for k in weights)
    assert (run / "log.csv").read_text() == log


@pytest.mark.slow
def test_a_real_ctrl_c_in_a_real_process_prints_how_to_resume(toy_root, tmp_path):
    import signal
    import time

    runs = tmp_path / "runs"
    command = [
        sys.executable,
        "-m",
        "cicld",
        "pretrain-ae",
        *map(str, stage_flags(toy_root, runs, steps=100_000)),
        "--num-workers",
        "1",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not list(runs.glob("pretrain-ae/*/checkpoints/step-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends (to the data-loading worker too, in a terminal)
    _, stderr = process.communicate(timeout=120)
    (run,) = stage_runs(runs, "pretrain-ae")
    assert process.returncode == 130
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    (line,) = lines
    assert line.startswith("error: pretrain-ae interrupted in step ") and "Traceback" not in stderr
    assert line.endswith(
        f"continue with `cicld pretrain-ae --resume {run}` (or `cicld pretrain-ae --resume latest --runs-root {runs}`)"
    )


def _checkpoint_to_damage(pretrained_runs, tmp_path) -> Path:
    runs = tmp_path / "runs"
    shutil.copytree(pretrained_runs, runs, symlinks=True)
    return stage_runs(runs, "pretrain-ldm")[0] / "checkpoints" / "step-00000002"


@pytest.mark.parametrize(
    "damaged, content, message",
    [
        ("model.safetensors", b"\x00" * 50, "the checkpoint is corrupt or does not fit this run (SafetensorError"),
        (
            "optimizer.safetensors",
            b"not a safetensors file",
            "the checkpoint is corrupt or does not fit this run (SafetensorError",
        ),
        ("optimizer.json", b'{"dict": [', "the checkpoint is corrupt or does not fit this run (JSONDecodeError"),
        ("trainer_state.json", b'{"step": ', "trainer_state.json is corrupt"),
    ],
    ids=["weights", "optimizer-tensors", "optimizer-state", "trainer-state"],
)
def test_resuming_a_corrupt_checkpoint_is_a_one_line_error(cli, pretrained_runs, tmp_path, damaged, content, message):
    checkpoint = _checkpoint_to_damage(pretrained_runs, tmp_path)
    (checkpoint / damaged).write_bytes(content)
    result = cli("pretrain-ldm", "--resume", checkpoint)
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot resume from {checkpoint}: ") and message in line


def test_resume_naming_a_file_is_a_one_line_error(cli, pretrained_runs, tmp_path):
    checkpoint = _checkpoint_to_damage(pretrained_runs, tmp_path)
    result = cli("pretrain-ldm", "--resume", checkpoint / "model.safetensors")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --resume {checkpoint / 'model.safetensors'} is a file; name a run folder, one of its "
        "checkpoint folders or latest"
    ]


def test_resume_naming_an_empty_path_is_a_one_line_error_saying_what_it_takes(cli, tmp_path):
    result = cli("adapt", "--resume", "", "--runs-root", tmp_path / "runs")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: --resume needs a run folder, one of its checkpoint folders or latest; it was given nothing"
    ]


def test_a_run_of_another_stage_is_named_with_its_article(cli, toy_root, tmp_path):
    run = tmp_path / "runs" / "adapt" / "toy-20261202-120000"
    run.mkdir(parents=True)
    (run / "config.json").write_text('{"stage": "adapt"}')
    resumed = cli("pretrain-ldm", "--resume", run)
    assert resumed.stderr.strip().splitlines() == [f"error: {run} is an adapt run, not pretrain-ldm"]
    evaluated = cli("evaluate", run, "--data", toy_root / "cityscapes", "--out", tmp_path / "pictures")
    assert evaluated.stderr.strip().splitlines()[0].startswith(f"error: {run} is an adapt run that has not finished")


@pytest.mark.parametrize("stage", ["pretrain-ae", "adapt"])
def test_a_crop_the_model_cannot_tile_is_one_line_naming_crop_before_anything_is_created(
    cli, toy_root, pretrained_runs, tmp_path, stage
):
    runs = tmp_path / "runs"
    shutil.copytree(pretrained_runs, runs, symlinks=True)
    before = sorted(runs.rglob("*"))
    result = cli(stage, *stage_flags(toy_root, runs), "--crop", "40x24")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: --crop 40x24: this model needs sides that are multiples of 16, e.g. --crop 32x16"
    ]
    assert sorted(runs.rglob("*")) == before


def test_resume_naming_nothing_that_exists_is_a_one_line_error(cli, tmp_path):
    result = cli("adapt", "--resume", tmp_path / "nowhere")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --resume {tmp_path / 'nowhere'}: no such run or checkpoint folder"
    ]


def test_a_data_error_with_loader_workers_is_the_same_one_short_line_as_without(cli, toy_root, tmp_path):
    data = tmp_path / "toy"
    shutil.copytree(toy_root, data)
    for image in (data / "gta5" / "images").glob("*.png"):
        image.write_bytes(image.read_bytes()[:100])
    lines = {}
    for workers in ("0", "1"):
        flags = stage_flags(data, tmp_path / "runs")
        result = cli("pretrain-ae", *flags, "--num-workers", workers)
        assert result.exit_code == 2
        (lines[workers],) = result.stderr.strip().splitlines()
    assert lines["1"] == lines["0"]
    assert lines["0"].startswith("error: ") and lines["0"].endswith("is corrupt or truncated (image file is truncated)")


# ---------------------------------------------------------------- one sync per optimizer step
def _micro_batch_session(tmp_path, grad_accum_steps):
    config = make_config("pretrain-ldm", source="toy", runs_root=str(tmp_path), grad_accum_steps=grad_accum_steps)
    session = Session(config)
    torch.manual_seed(0)
    objective = torch.nn.Linear(2, 1)
    objective, optimizer = session.accelerator.prepare(objective, torch.optim.SGD(objective.parameters(), lr=0.1))
    return session, objective, optimizer


def test_losses_are_read_from_the_device_once_per_optimizer_step_not_per_micro_batch(tmp_path, monkeypatch):
    session, objective, optimizer = _micro_batch_session(tmp_path, grad_accum_steps=4)
    reads = []
    for name in ("item", "tolist", "__float__", "__bool__"):  # every way a tensor's value reaches Python
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(
            torch.Tensor, name, lambda self, *a, _o=original, _n=name, **k: (reads.append(_n), _o(self, *a, **k))[1]
        )

    def losses(micro):
        out = objective(torch.full((1, 2), float(micro))).sum()
        return {"a": out, "b": 2 * out}

    try:
        averages = loop.optimizer_step(session, loop.Stage(objective, optimizer, losses), 0)
    finally:
        monkeypatch.undo()
        session.close()
    assert len(reads) == 1, reads
    assert set(averages) == {"a", "b"} and all(isinstance(v, float) for v in averages.values())
    assert averages["b"] == pytest.approx(2 * averages["a"])


def test_a_nan_loss_in_any_micro_batch_stops_the_step_before_the_weights_change(tmp_path):
    from cicld.training.stops import TrainingDiverged

    session, objective, optimizer = _micro_batch_session(tmp_path, grad_accum_steps=3)
    before = {k: v.clone() for k, v in objective.state_dict().items()}

    def losses(micro):
        out = objective(torch.ones(1, 2)).sum()
        return {"ce": out * float("nan") if micro == 7 * 3 + 1 else out}  # the second micro-batch of step 7

    try:
        with pytest.raises(TrainingDiverged, match=r"diverged at step 7 \(ce=nan\)"):
            loop.optimizer_step(session, loop.Stage(objective, optimizer, losses), 7)
    finally:
        session.close()
    assert all(torch.equal(before[k], v) for k, v in objective.state_dict().items())


def test_a_data_loading_worker_prints_no_traceback_for_a_connection_the_interrupted_main_process_dropped(
    monkeypatch, capsys
):
    from cicld.training.batches import quiet_dropped_connections

    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)  # restored after the test
    quiet_dropped_connections(0)  # what each worker runs first
    for dropped in (EOFError(), ConnectionResetError(104, "Connection reset by peer"), BrokenPipeError()):
        sys.excepthook(type(dropped), dropped, None)
    assert capsys.readouterr().err == ""
    sys.excepthook(ValueError, ValueError("a real error in a worker"), None)
    assert "ValueError: a real error in a worker" in capsys.readouterr().err
