"""Checkpoints are atomic, pruned, and restore the exact training state."""

import json

import pytest
import torch
from accelerate import Accelerator

from cicld.errors import CicldError
from cicld.training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from cicld.training.runs import mark_latest, newest_finished_run, new_run_dir, resolve_model_dir


def _setup(seed=0):
    torch.manual_seed(seed)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer


def _train_step(model, optimizer):
    loss = model(torch.ones(2, 4)).pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def test_a_checkpoint_restores_weights_and_optimizer_state_exactly(tmp_path):
    accelerator, model, optimizer = _setup()
    _train_step(model, optimizer)
    save_checkpoint(accelerator, tmp_path, step=1, state={"epoch": 0})
    _train_step(model, optimizer)
    expected = model.weight.detach().clone()

    accelerator, model, optimizer = _setup(seed=123)  # different init: must be overwritten
    state = load_checkpoint(accelerator, latest_checkpoint(tmp_path))
    assert state == {"step": 1, "epoch": 0}
    _train_step(model, optimizer)
    assert torch.equal(model.weight.detach(), expected)


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    accelerator, model, optimizer = _setup()
    for step in (10, 20, 30):
        save_checkpoint(accelerator, tmp_path, step=step, state={}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000020", "step-00000030"]


def test_saving_a_step_drops_the_later_checkpoints_of_an_abandoned_continuation(tmp_path):
    accelerator, model, optimizer = _setup()
    for step in (10, 20, 30):
        save_checkpoint(accelerator, tmp_path, step=step, state={}, keep=5)
    save_checkpoint(accelerator, tmp_path, step=20, state={"again": True}, keep=5)  # resumed from step 10
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000010", "step-00000020"]
    assert load_checkpoint(accelerator, latest_checkpoint(tmp_path)) == {"step": 20, "again": True}


def test_a_crash_during_a_write_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    accelerator, model, optimizer = _setup()
    save_checkpoint(accelerator, tmp_path, step=5, state={})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. the job is killed while writing

    monkeypatch.setattr(accelerator, "save_state", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(accelerator, tmp_path, step=6, state={})
    assert latest_checkpoint(tmp_path).name == "step-00000005"
    monkeypatch.undo()
    assert load_checkpoint(accelerator, latest_checkpoint(tmp_path))["step"] == 5


def test_an_incomplete_checkpoint_folder_is_refused_with_a_clear_error(tmp_path):
    accelerator, _, _ = _setup()
    (tmp_path / "step-00000001").mkdir()
    with pytest.raises(CicldError, match="not a complete cicld checkpoint"):
        load_checkpoint(accelerator, tmp_path / "step-00000001")


def test_latest_points_at_the_newest_finished_run_and_resolves_as_the_default_model(tmp_path):
    runs = tmp_path / "runs"
    run = new_run_dir(runs, "adapt", "toy")
    (run / "config.json").write_text(json.dumps({"source": "gta5"}))
    assert newest_finished_run(runs, "adapt") is None
    (run / "final").mkdir()
    (run / "final" / "config.json").write_text("{}")
    assert newest_finished_run(runs, "adapt", source="gta5") == run
    assert newest_finished_run(runs, "adapt", source="synthia") is None
    mark_latest(runs, run / "final")
    assert resolve_model_dir(None, runs) == (run / "final").resolve()
    assert resolve_model_dir(run, runs) == run / "final"


def test_no_finished_run_is_a_one_line_hint(tmp_path):
    with pytest.raises(CicldError, match="no finished run"):
        resolve_model_dir(None, tmp_path / "runs")
