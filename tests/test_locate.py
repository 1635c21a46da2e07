"""What a path names: every command that takes a model, a run or a checkpoint decides it alike."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from cicld.training.locate import find_model, resolve_init_from, resolve_model_dir, run_of
from cicld.training.runs import stage_runs

from conftest import stage_flags


@pytest.fixture
def paths(pretrained_runs, tmp_path):
    """One path of each kind: a finished run, a model folder copied elsewhere, an unfinished run,
    one of its checkpoints, a model's config without weights, an empty folder, nothing."""
    (finished,) = stage_runs(pretrained_runs, "pretrain-ldm")
    unfinished = tmp_path / "runs" / "pretrain-ldm" / "unfinished"
    shutil.copytree(finished, unfinished)
    shutil.rmtree(unfinished / "final")
    no_weights = tmp_path / "no-weights"
    shutil.copytree(finished / "final", no_weights)
    (no_weights / "model.safetensors").unlink()
    (tmp_path / "empty").mkdir()
    return {
        "finished": finished,
        "copied": shutil.copytree(finished / "final", tmp_path / "copied"),
        "unfinished": unfinished,
        "checkpoint": unfinished / "checkpoints" / "step-00000002",
        "no-weights": no_weights,
        "empty": tmp_path / "empty",
        "nowhere": tmp_path / "nowhere",
    }


def test_a_finished_run_names_its_final_folder_and_a_model_folder_itself_wherever_it_lies(paths):
    assert find_model(paths["finished"]) == paths["finished"] / "final"
    assert find_model(paths["copied"]) == paths["copied"]
    assert run_of(find_model(paths["finished"])) == paths["finished"]
    assert run_of(paths["copied"]) is None  # a copied model folder has no run beside it


def _errors(paths, kind: str) -> str:
    path = paths[kind]
    return {
        "unfinished": f"{path} is a pretrain-ldm run that has not finished (no final/); "
        f"finish it with `cicld pretrain-ldm --resume {path}`, or name a finished run",
        "checkpoint": f"{path} is a training checkpoint, not a model; continue its run with "
        f"`cicld pretrain-ldm --resume {path}`, then use {path.parent.parent / 'final'}",
        "no-weights": f"{path} has a config.json but no model.safetensors: not a complete model folder",
        "empty": f"{path} is neither a model folder (config.json + model.safetensors) nor a finished run (final/)",
        "nowhere": f"{path} does not exist",
    }[kind]


KINDS = ["unfinished", "checkpoint", "no-weights", "empty", "nowhere"]


@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_says_in_one_line_what_it_was_given_instead_of_a_model(cli, paths, toy_root, tmp_path, kind):
    result = cli("evaluate", paths[kind], "--data", toy_root / "cityscapes", "--out", tmp_path / "pictures")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: {_errors(paths, kind)}"]


@pytest.mark.parametrize("kind", KINDS)
def test_predict_says_in_one_line_what_it_was_given_instead_of_a_model(cli, paths, toy_root, tmp_path, kind):
    image = next((toy_root / "cityscapes" / "leftImg8bit" / "val").rglob("*.png"))
    result = cli("predict", image, tmp_path / "out", "--checkpoint", paths[kind])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: {_errors(paths, kind)}"]


@pytest.mark.parametrize("kind", KINDS)
def test_init_from_says_in_one_line_what_it_was_given_instead_of_a_model(cli, paths, toy_root, tmp_path, kind):
    runs = tmp_path / "new-runs"
    result = cli("adapt", *stage_flags(toy_root, runs), "--init-from", paths[kind])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: --init-from {_errors(paths, kind)}"]
    assert not (runs / "adapt").exists() or not any((runs / "adapt").iterdir())


def test_evaluate_predict_and_init_from_take_the_same_model_folders(paths, tmp_path):
    for kind in ("finished", "copied"):
        expected = find_model(paths[kind])
        assert resolve_model_dir(paths[kind], tmp_path / "runs") == expected
        assert resolve_init_from(str(paths[kind]), tmp_path / "runs", "pretrain-ldm", "toy") == expected


def test_resume_naming_a_model_folder_says_it_is_not_a_run(cli, paths):
    result = cli("pretrain-ldm", "--resume", paths["finished"] / "final")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --resume {paths['finished'] / 'final'} is a model folder, not a run; name the run folder it "
        "came from, or latest"
    ]


def _model_with_a_weight(paths, tmp_path, value: float) -> tuple[Path, str]:
    """A copy of a model folder whose first weight has one NaN or infinite value; and its key."""
    folder = shutil.copytree(paths["copied"], tmp_path / f"weight-{value}")
    weights = load_file(folder / "model.safetensors")
    key = next(k for k, v in weights.items() if v.is_floating_point())
    weights[key].view(-1)[0] = value
    save_file(weights, folder / "model.safetensors")
    return folder, key


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("command", ["evaluate", "predict", "init-from"])
def test_a_model_with_a_nan_or_infinite_weight_is_refused_in_one_line_wherever_it_is_loaded(
    cli, paths, toy_root, tmp_path, command, value
):
    model, key = _model_with_a_weight(paths, tmp_path, value)
    out, runs = tmp_path / "out", tmp_path / "new-runs"
    if command == "evaluate":
        result = cli("evaluate", model, "--data", toy_root / "cityscapes", "--out", out)
    elif command == "predict":
        image = next((toy_root / "cityscapes" / "leftImg8bit" / "val").rglob("*.png"))
        result = cli("predict", image, out, "--checkpoint", model)
    else:
        result = cli("adapt", *stage_flags(toy_root, runs), "--init-from", model)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: weights in {model / 'model.safetensors'} hold NaN or infinite values ({key}): the model diverged or "
        "the file is damaged; cicld does not load it"
    ]
    assert not out.exists() and not runs.exists()  # nothing scored, written or trained


def test_a_checkpoint_with_a_nan_weight_is_refused_in_one_line(cli, paths):
    checkpoint = paths["checkpoint"]
    weights = load_file(checkpoint / "model.safetensors")
    key = next(k for k, v in weights.items() if v.is_floating_point())
    weights[key].view(-1)[0] = float("nan")
    save_file(weights, checkpoint / "model.safetensors")
    result = cli("pretrain-ldm", "--resume", checkpoint)
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot resume from {checkpoint}: the weights in model.safetensors hold NaN or inf")
