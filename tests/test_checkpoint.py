"""Checkpoints and exports are atomic, pruned, and restore the exact training state."""

import itertools
import json
import os
import pickle
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from cicld.errors import CicldError
from cicld.models import CICLD, CICLDConfig
from cicld.training import checkpoint, runs
from cicld.training.checkpoint import (
    TrainingState,
    checkpoint_root,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from cicld.training.config import make_config
from cicld.training.locate import newest_finished_run, resolve_model_dir
from cicld.training.runs import mark_latest, new_run_dir, recover_replaced, stage_runs
from cicld.training.session import Session

from conftest import REPO, stage_flags


def _setup(seed=0):
    torch.manual_seed(seed)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer, TrainingState({"model": model}, optimizer)


def _train_step(model, optimizer):
    loss = model(torch.ones(2, 4)).pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def test_a_checkpoint_restores_weights_and_optimizer_state_exactly(tmp_path):
    accelerator, model, optimizer, training = _setup()
    _train_step(model, optimizer)
    save_checkpoint(accelerator, tmp_path, step=1, training=training, state={"epoch": 0})
    _train_step(model, optimizer)
    expected = model.weight.detach().clone()

    accelerator, model, optimizer, training = _setup(seed=123)  # different init: must be overwritten
    state = load_checkpoint(accelerator, latest_checkpoint(tmp_path), training)
    assert state == {"step": 1, "epoch": 0}
    _train_step(model, optimizer)
    assert torch.equal(model.weight.detach(), expected)


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    accelerator, model, optimizer, training = _setup()
    for step in (10, 20, 30):
        save_checkpoint(accelerator, tmp_path, step=step, training=training, state={}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000020", "step-00000030"]


def test_saving_a_step_drops_the_later_checkpoints_of_an_abandoned_continuation(tmp_path):
    accelerator, model, optimizer, training = _setup()
    for step in (10, 20, 30):
        save_checkpoint(accelerator, tmp_path, step=step, training=training, state={}, keep=5)
    save_checkpoint(
        accelerator, tmp_path, step=20, training=training, state={"again": True}, keep=5
    )  # resumed from step 10
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000010", "step-00000020"]
    assert load_checkpoint(accelerator, latest_checkpoint(tmp_path), training) == {"step": 20, "again": True}


def test_a_crash_during_a_write_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    accelerator, model, optimizer, training = _setup()
    save_checkpoint(accelerator, tmp_path, step=5, training=training, state={})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. the job is killed while writing

    monkeypatch.setattr(checkpoint, "save_tensors", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(accelerator, tmp_path, step=6, training=training, state={})
    assert latest_checkpoint(tmp_path).name == "step-00000005"
    monkeypatch.undo()
    assert load_checkpoint(accelerator, latest_checkpoint(tmp_path), training)["step"] == 5


def test_an_incomplete_checkpoint_folder_is_refused_with_a_clear_error(tmp_path):
    accelerator, _, _, training = _setup()
    (tmp_path / "step-00000001").mkdir()
    with pytest.raises(CicldError, match="not a complete cicld checkpoint"):
        load_checkpoint(accelerator, tmp_path / "step-00000001", training)


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
    session.close()  # releases the run's lock (its empty lock file stays: see RunLock)
    assert _same_state(CICLD.from_pretrained(final).state_dict(), new.state_dict())
    assert sorted(p.name for p in session.run_dir.iterdir()) == [".lock", "config.json", "final"]  # no leftovers
    assert (tmp_path / "runs" / "latest").resolve() == final.resolve()


@pytest.mark.parametrize("exchange", [True, False], ids=["atomic-exchange", "rename-aside"])
def test_a_crash_at_any_point_of_a_checkpoint_save_leaves_only_complete_checkpoints(tmp_path, monkeypatch, exchange):
    _without_exchange(monkeypatch, exchange)
    accelerator, model, optimizer, training = _setup()
    for step in (10, 20):
        save_checkpoint(accelerator, tmp_path, step=step, training=training, state={}, keep=2)

    def all_checkpoints_load():
        if not exchange:  # what the next save does first
            recover_replaced(checkpoint_root(tmp_path))
        assert "step-00000020" in [p.name for p in list_checkpoints(tmp_path)]
        for saved in list_checkpoints(tmp_path):
            assert load_checkpoint(accelerator, saved, training)["step"] in (10, 20)

    # Step 20 again (a run resumed from step 10), pruning step 10 afterwards.
    _every_crash(
        monkeypatch,
        lambda: save_checkpoint(accelerator, tmp_path, step=20, training=training, state={"again": True}, keep=1),
        all_checkpoints_load,
    )
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000020"]
    assert load_checkpoint(accelerator, latest_checkpoint(tmp_path), training) == {"step": 20, "again": True}
    assert sorted(p.name for p in checkpoint_root(tmp_path).iterdir()) == ["step-00000020"]  # no leftovers


# ---------------------------------------------------------------- a checkpoint never runs code
class _Payload:
    """A pickle that creates the file ``marker`` when it is loaded: what an attacker's code would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _adapt_run_with_checkpoints(cli, toy_root, pretrained_runs, tmp_path) -> Path:
    runs = tmp_path / "runs"
    shutil.copytree(pretrained_runs, runs, symlinks=True)
    result = cli("adapt", *stage_flags(toy_root, runs, steps=4))
    assert result.exit_code == 0, result.stderr
    (run,) = stage_runs(runs, "adapt")
    return run


#: The pickles Accelerate's save_state writes and load_state reads (earlier cicld checkpoints).
ACCELERATE_PICKLES = ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "scaler.pt")


@pytest.mark.parametrize("planted", [*ACCELERATE_PICKLES, "all"])
def test_resuming_a_checkpoint_with_a_pickle_planted_in_it_runs_no_code_and_resumes(
    cli, toy_root, pretrained_runs, tmp_path, planted
):
    run = _adapt_run_with_checkpoints(cli, toy_root, pretrained_runs, tmp_path)
    checkpoint, marker = run / "checkpoints" / "step-00000002", tmp_path / "PWNED"
    for name in ACCELERATE_PICKLES if planted == "all" else [planted]:
        (checkpoint / name).write_bytes(pickle.dumps(_Payload(marker)))
    result = cli("adapt", "--resume", checkpoint)
    assert not marker.exists()
    assert result.exit_code == 0, result.stderr


def test_a_checkpoint_in_the_old_pickled_format_is_refused_in_one_line_without_being_unpickled(
    cli, toy_root, pretrained_runs, tmp_path
):
    run = _adapt_run_with_checkpoints(cli, toy_root, pretrained_runs, tmp_path)
    checkpoint, marker = run / "checkpoints" / "step-00000002", tmp_path / "PWNED"
    for name in ("optimizer.safetensors", "optimizer.json", "ema_model.safetensors"):
        (checkpoint / name).unlink(missing_ok=True)  # what Accelerate's save_state wrote instead: pickles
    for name in ACCELERATE_PICKLES:
        (checkpoint / name).write_bytes(pickle.dumps(_Payload(marker)))
    result = cli("adapt", "--resume", checkpoint)
    assert not marker.exists()
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot resume from {checkpoint}: an earlier cicld wrote it with pickles")


def test_every_stages_checkpoints_hold_only_safetensors_and_json(cli, toy_root, pretrained_runs, tmp_path):
    run = _adapt_run_with_checkpoints(cli, toy_root, pretrained_runs, tmp_path)
    checkpoints = [
        c
        for stage in ("pretrain-ae", "pretrain-ldm", "adapt")
        for r in stage_runs(run.parent.parent, stage)
        for c in list_checkpoints(r)
    ]
    assert {c.parent.parent.parent.name for c in checkpoints} == {"pretrain-ae", "pretrain-ldm", "adapt"}
    for saved in checkpoints:
        for file in saved.iterdir():
            assert file.suffix in (".safetensors", ".json"), file
            head = file.read_bytes()[:2]
            assert head[:1] != b"\x80" and head != b"PK", f"{file} looks like a pickle or a torch.save archive"
    ema = load_file(run / "checkpoints" / "step-00000004" / "ema_model.safetensors")
    exported = load_file(run / "final" / "model.safetensors")
    assert all(torch.equal(ema[k], exported[k]) for k in exported)  # the EMA model is what adapt exports


def test_no_code_loads_a_torch_file_without_weights_only():
    loader = "torch" + ".load("  # split, so that this test does not find itself
    offenders = []
    for folder in ("cicld", "benchmarks", "tests", "examples"):
        for path in (REPO / folder).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if loader in line and "weights_only=True" not in line:
                    offenders.append(f"{path.relative_to(REPO)}:{number}")
    assert offenders == []


def test_the_optimizer_state_round_trips_through_json_and_safetensors_with_its_types(tmp_path):
    accelerator, model, optimizer, training = _setup()
    _train_step(model, optimizer)
    before = optimizer.state_dict()
    save_checkpoint(accelerator, tmp_path, step=1, training=training)
    accelerator, model, optimizer, training = _setup(seed=5)
    load_checkpoint(accelerator, latest_checkpoint(tmp_path), training)
    after = optimizer.state_dict()
    assert after["param_groups"] == before["param_groups"]  # betas a tuple again, None and bools kept
    assert isinstance(after["param_groups"][0]["betas"], tuple)
    assert after["state"].keys() == before["state"].keys()  # integer parameter ids
    for key, state in before["state"].items():
        assert all(torch.equal(after["state"][key][name], value) for name, value in state.items())


def test_the_fp16_loss_scaler_is_checkpointed_and_restored(tmp_path):
    accelerator, model, optimizer, training = _setup()
    training.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    training.scaler.scale(torch.ones(()))  # a step's loss
    training.scaler.update(new_scale=256.0)  # as after overflows
    save_checkpoint(accelerator, tmp_path, step=1, training=training)
    assert json.loads((latest_checkpoint(tmp_path) / "scaler.json").read_text())["scale"] == 256.0
    accelerator, model, optimizer, training = _setup()
    training.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    load_checkpoint(accelerator, latest_checkpoint(tmp_path), training)
    assert training.scaler.get_scale() == 256.0 and training.scaler.get_growth_interval() == 3


# ---------------------------------------------------------------- a full disk
#: What safetensors' writer raises when the disk is full (seen on a full tmpfs).
_FULL_DISK = "Error while serializing: I/O error: No space left on device (os error 28)"


def _disk_full_for(monkeypatch, where: str) -> None:
    """safetensors' writer fails as on a full disk for every file whose path holds ``where``."""
    import safetensors.torch
    from safetensors import SafetensorError

    real = safetensors.torch.save_file

    def save_file(tensors, filename, metadata=None):
        if where in str(filename):
            raise SafetensorError(_FULL_DISK)
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)


def _assert_room_and_resume(stderr: str, failed: str, what: str, last: Path, run: Path):
    """One line: the write that failed, the room it takes and the room free, and how to resume."""
    (line,) = stderr.strip().splitlines()
    expected = (
        rf"error: cannot write {re.escape(failed)}: No space left on device "
        rf"\({what} takes about \d+\.\d MB; \d+\.\d MB free\); the last checkpoint is {re.escape(str(last))}: "
        rf"continue with `cicld pretrain-ldm --resume {re.escape(str(run))}`.*"
    )
    assert re.fullmatch(expected, line), line


@pytest.mark.parametrize("full_at", ["checkpoint", "export"])
def test_a_full_disk_at_a_checkpoint_or_the_export_is_one_line_saying_the_room_needed_and_how_to_resume(
    cli, toy_root, pretrained_runs, tmp_path, monkeypatch, full_at
):
    runs = tmp_path / "runs"
    shutil.copytree(pretrained_runs, runs, symlinks=True)
    with monkeypatch.context() as patched:
        _disk_full_for(patched, ".step-00000004.tmp" if full_at == "checkpoint" else ".final.tmp")
        result = cli("pretrain-ldm", *stage_flags(toy_root, runs, steps=4))
    assert result.exit_code == 2
    run = max(stage_runs(runs, "pretrain-ldm"))
    checkpoints = run / "checkpoints"
    if full_at == "checkpoint":
        failed, last = checkpoints / "step-00000004", checkpoints / "step-00000002"
        _assert_room_and_resume(result.stderr, f"checkpoint {failed}", "a checkpoint", last, run)
    else:
        failed, last = run / "final", checkpoints / "step-00000004"
        _assert_room_and_resume(result.stderr, f"the model to {failed}", "the model", last, run)
    assert not list(run.rglob("*.tmp")) and not failed.exists()  # no temporary folder or file is left behind

    result = cli("pretrain-ldm", "--resume", run)  # once there is room again
    assert result.exit_code == 0, result.stderr
    assert (run / "final" / "model.safetensors").is_file()


def test_a_full_disk_while_logging_is_one_line_saying_how_to_resume(
    cli, toy_root, pretrained_runs, tmp_path, monkeypatch
):
    import errno

    runs = tmp_path / "runs"
    shutil.copytree(pretrained_runs, runs, symlinks=True)
    log = Session.log

    def log_on_a_full_disk(self, step, values):
        if step == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.run_dir / "log.csv"))
        return log(self, step, values)

    monkeypatch.setattr(Session, "log", log_on_a_full_disk)
    result = cli("pretrain-ldm", *stage_flags(toy_root, runs, steps=4))
    run = max(stage_runs(runs, "pretrain-ldm"))
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: cannot write {run / 'log.csv'}: No space left on device; the last checkpoint is "
        f"{run / 'checkpoints' / 'step-00000002'}: continue with `cicld pretrain-ldm --resume {run}` "
        f"(or `cicld pretrain-ldm --resume latest --runs-root {runs}`)"
    ]


def _can_mount_a_tmpfs(folder: Path) -> bool:
    """Whether this machine lets a user namespace mount a tmpfs (``unshare -rm``): a real full disk."""
    folder.mkdir()
    try:
        mount = f"mount -t tmpfs -o size=1m tmpfs {shlex.quote(str(folder))}"
        probe = subprocess.run(["unshare", "-rm", "sh", "-c", mount], capture_output=True, timeout=60)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("full_at", ["checkpoint", "export"])
def test_a_real_full_disk_is_one_line_leaves_no_temporary_folder_and_the_run_resumes_once_there_is_room(
    toy_root, tmp_path, full_at
):
    if not _can_mount_a_tmpfs(tmp_path / "probe"):
        pytest.skip("this machine does not let `unshare -rm` mount a tmpfs, the small real disk this test fills")
    # How much room a checkpoint and a model take, from a run on the ordinary disk.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "cicld", "pretrain-ae", *map(str, stage_flags(toy_root, tmp_path / "measured"))]
    measured = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert measured.returncode == 0, measured.stderr
    (run,) = stage_runs(tmp_path / "measured", "pretrain-ae")
    checkpoint_size = sum(f.stat().st_size for f in (run / "checkpoints" / "step-00000002").iterdir())
    model_size = (run / "final" / "model.safetensors").stat().st_size
    if full_at == "checkpoint":  # room for the first checkpoint, not for the second beside it
        disk, flags = checkpoint_size * 3 // 2, ["--steps", "4"]
    else:  # room for the last checkpoint, not for the model beside it
        disk, flags = checkpoint_size + model_size // 2, ["--steps", "2", "--keep-checkpoints", "1"]

    runs, out = tmp_path / "runs", tmp_path / "out"
    runs.mkdir()
    out.mkdir()
    cicld = f"{shlex.quote(sys.executable)} -m cicld pretrain-ae"
    train = " ".join(map(shlex.quote, [*map(str, stage_flags(toy_root, runs)), *flags]))
    script = (
        f"mount -t tmpfs -o size={disk} tmpfs {runs} && "
        f"{{ {cicld} {train} >{out}/full.out 2>{out}/full.err; echo $? >{out}/full.rc; }} && "
        f"find {runs} -name '*.tmp' >{out}/left && "
        f"mount -o remount,size={4 * checkpoint_size} tmpfs {runs} && "  # room again
        f"{{ {cicld} --resume latest --source toy --runs-root {runs} >{out}/resumed.out 2>{out}/resumed.err; "
        f"echo $? >{out}/resumed.rc; }} && "
        f"ls {runs}/pretrain-ae/*/final >{out}/final"
    )
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (out / "full.rc").read_text().strip() == "2"
    (line,) = (out / "full.err").read_text().strip().splitlines()
    what = "a checkpoint" if full_at == "checkpoint" else "the model"
    assert f": No space left on device ({what} takes about" in line and "Traceback" not in line
    assert re.search(r"the last checkpoint is \S+/step-00000002: continue with `cicld pretrain-ae --resume ", line)
    assert (out / "left").read_text() == ""  # no .step-N.tmp or .final.tmp left behind
    assert (out / "resumed.rc").read_text().strip() == "0", (out / "resumed.err").read_text()
    assert "model.safetensors" in (out / "final").read_text()
