"""Checkpoints and exports are atomic, pruned, and restore the exact training state."""

import itertools
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from cicld.errors import CicldError
from cicld.models import CICLD, CICLDConfig
from cicld.training import runs
from cicld.training.checkpoint import checkpoint_root, latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from cicld.training.config import make_config
from cicld.training.locate import newest_finished_run, resolve_model_dir
from cicld.training.runs import mark_latest, new_run_dir, recover_replaced
from cicld.training.session import Session


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
    assert newest_finished_run(runs, "adapt") is None  # a final/ without weights is no model
    (run / "final" / "model.safetensors").write_bytes(b"")
    assert newest_finished_run(runs, "adapt", source="gta5") == run
    assert newest_finished_run(runs, "adapt", source="synthia") is None
    mark_latest(runs, run / "final")
    assert resolve_model_dir(None, runs) == (run / "final").resolve()
    assert resolve_model_dir(run, runs) == run / "final"


def test_no_finished_run_is_a_one_line_hint(tmp_path):
    with pytest.raises(CicldError, match="no finished run"):
        resolve_model_dir(None, tmp_path / "runs")


# ---------------------------------------------------------------- a crash at any point
def _crash_at(monkeypatch, k: int) -> None:
    """Kill the process (KeyboardInterrupt) at its k-th file-system step: an ``os.replace``, the
    atomic exchange, or a ``shutil.rmtree``, which is killed halfway (the first half of the folder's
    files gone, the rest, e.g. trainer_state.json, still there)."""
    calls = itertools.count(1)
    replace, rmtree, exchange = os.replace, shutil.rmtree, runs._exchange

    def killed_halfway(path, *args, **kwargs):
        if next(calls) == k:
            files = sorted(p for p in Path(path).rglob("*") if p.is_file())
            for file in files[: len(files) // 2]:
                file.unlink()
            raise KeyboardInterrupt
        return rmtree(path, *args, **kwargs)

    def killed_before(function):
        def step(*args, **kwargs):
            if next(calls) == k:
                raise KeyboardInterrupt
            return function(*args, **kwargs)

        return step

    monkeypatch.setattr(os, "replace", killed_before(replace))
    monkeypatch.setattr(runs, "_exchange", killed_before(exchange))
    monkeypatch.setattr(shutil, "rmtree", killed_halfway)


def _without_exchange(monkeypatch, exchange: bool) -> None:
    if not exchange:  # as on a system or file system without an atomic folder swap
        monkeypatch.setattr(runs, "_exchange", lambda new, target: False)


def _every_crash(monkeypatch, write, after_crash) -> None:
    """Run ``write()`` killed at its 1st, 2nd, ... file-system step until it completes, calling
    ``after_crash()`` after each kill."""
    for k in itertools.count(1):
        with monkeypatch.context() as patched:
            _crash_at(patched, k)
            try:
                write()
                return
            except KeyboardInterrupt:
                pass
        after_crash()


def _tiny_model(seed: int) -> CICLD:
    torch.manual_seed(seed)
    return CICLD(CICLDConfig.preset("tiny"))


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("exchange", [True, False], ids=["atomic-exchange", "rename-aside"])
def test_a_crash_at_any_point_of_an_export_leaves_a_loadable_final(tmp_path, monkeypatch, exchange):
    _without_exchange(monkeypatch, exchange)
    session = Session(make_config("adapt", source="toy", runs_root=str(tmp_path / "runs")))
    session.open_run()
    old, new = _tiny_model(0), _tiny_model(1)
    final = session.export(old, update_latest=True)

    def final_loads():
        if not exchange:  # what the next export does first: put an aside final back
            recover_replaced(session.run_dir)
        loaded = CICLD.from_pretrained(final).state_dict()
        assert _same_state(loaded, old.state_dict()) or _same_state(loaded, new.state_dict())

    _every_crash(monkeypatch, lambda: session.export(new, update_latest=True), final_loads)
    session.close()  # releases the run's lock (and deletes its lock file)
    assert _same_state(CICLD.from_pretrained(final).state_dict(), new.state_dict())
    assert sorted(p.name for p in session.run_dir.iterdir()) == ["config.json", "final"]  # no leftovers
    assert (tmp_path / "runs" / "latest").resolve() == final.resolve()


@pytest.mark.parametrize("exchange", [True, False], ids=["atomic-exchange", "rename-aside"])
def test_a_crash_at_any_point_of_a_checkpoint_save_leaves_only_complete_checkpoints(tmp_path, monkeypatch, exchange):
    _without_exchange(monkeypatch, exchange)
    accelerator, model, optimizer = _setup()
    for step in (10, 20):
        save_checkpoint(accelerator, tmp_path, step=step, state={}, keep=2)

    def all_checkpoints_load():
        if not exchange:  # what the next save does first
            recover_replaced(checkpoint_root(tmp_path))
        assert "step-00000020" in [p.name for p in list_checkpoints(tmp_path)]
        for checkpoint in list_checkpoints(tmp_path):
            assert load_checkpoint(accelerator, checkpoint)["step"] in (10, 20)

    # Step 20 again (a run resumed from step 10), pruning step 10 afterwards.
    _every_crash(monkeypatch, lambda: save_checkpoint(accelerator, tmp_path, step=20, state={"again": True}, keep=1), all_checkpoints_load)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000020"]
    assert load_checkpoint(accelerator, latest_checkpoint(tmp_path)) == {"step": 20, "again": True}
    assert sorted(p.name for p in checkpoint_root(tmp_path).iterdir()) == ["step-00000020"]  # no leftovers
