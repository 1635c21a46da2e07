"""Shared fixtures: tiny datasets in each real on-disk format, and a CLI runner."""

from __future__ import annotations

import os

# Tests never download: transformers and huggingface_hub read these when they are imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import png  # pypng: an independent PNG writer (test dependency)
import pytest
import torch

from cicld.data.labels import cityscapes_id_palette
from cicld.data.pngio import write_image
from cicld.data.toy import generate_toy_pair, prepare_toy_pair

REPO = Path(__file__).resolve().parents[1]


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


def run_or_show_where_it_hangs(command: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """``subprocess.run(command)``; but where it outlives ``timeout``, every Python process it started
    (torchrun's workers too, which sit in sessions of their own) prints its threads' stacks
    (faulthandler on SIGABRT) and the test fails with them, so that a hang seen once on a loaded
    machine says where it was."""
    env = {**env, "PYTHONFAULTHANDLER": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        tree = _descendants(process.pid)
        for signal_number, wait in ((signal.SIGABRT, 60), (signal.SIGKILL, None)):
            for pid in [process.pid, *tree]:
                try:
                    os.kill(pid, signal_number)
                except ProcessLookupError:
                    pass
            try:
                stdout, stderr = process.communicate(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        pytest.fail(
            f"{command[:6]}... still ran after {timeout} s; its stacks:\n{stderr[-12000:]}\nstdout:\n{stdout[-2000:]}"
        )
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def free_port() -> int:
    """A TCP port nobody listens on now, for a rendezvous on localhost."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """The processes ``pid`` started, and theirs (Linux's /proc; none elsewhere)."""
    found, queue = [], [pid]
    while queue:
        parent = queue.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                kids = [int(child) for child in children.read_text().split()]
            except OSError:
                continue
            found += kids
            queue += kids
    return found


@pytest.fixture(scope="module")
def single_thread():
    """Tiny tensors gain nothing from threads, and on a shared CPU contending OpenMP threads
    make tests measure the neighbours instead of the model."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run ``cicld ARGS...`` in-process and return its exit code and output."""
    from cicld.cli import main

    # A terminal wide enough that rich never breaks a line the tests read inside a long tmp path.
    monkeypatch.setenv("COLUMNS", "1000")

    def run(*args: str) -> CliResult:
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def run_cicld_process(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m cicld ARGS...`` as a real process (to see exactly what a user sees)."""
    return subprocess.run(
        [sys.executable, "-m", "cicld", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def write_gta5_frame(
    root: Path, stem: str, label_ids: np.ndarray, image_size: tuple[int, int] | None = None, seed: int = 0
):
    """One GTA5 frame: RGB image and a palette label whose indices are Cityscapes label ids."""
    height, width = label_ids.shape if image_size is None else image_size[::-1]
    rng = np.random.default_rng(seed)
    write_image(root / "images" / f"{stem}.png", rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    write_image(root / "labels" / f"{stem}.png", label_ids.astype(np.uint8), palette=cityscapes_id_palette())


def write_synthia_label(path: Path, class_ids: np.ndarray, instance_ids: np.ndarray) -> None:
    """A SYNTHIA label as the real ones are: 16-bit RGB, class id in red, instance id in green."""
    height, width = class_ids.shape
    rgb = np.stack([class_ids, instance_ids, np.zeros_like(class_ids)], axis=-1).astype(np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        png.Writer(width, height, bitdepth=16, greyscale=False).write(handle, rgb.reshape(height, -1).tolist())


def write_cityscapes_frame(root: Path, split: str, city: str, frame: int, label_ids: np.ndarray | None, seed: int = 0):
    height, width = (8, 16) if label_ids is None else label_ids.shape
    stem = f"{city}_000000_{frame:06d}"
    rng = np.random.default_rng(seed)
    write_image(
        root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
        rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
    )
    if label_ids is not None:
        write_image(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label_ids.astype(np.uint8))


# Label ids that cover road, sidewalk, building, car, person, sky and an unlabelled (255) id.
GTA5_IDS = np.array([[7, 7, 8, 11], [26, 24, 23, 0], [7, 26, 26, 11]], dtype=np.uint8)


@pytest.fixture
def gta5_root(tmp_path: Path) -> Path:
    root = tmp_path / "gta5"
    for i in range(3):
        write_gta5_frame(root, f"{i:05d}", np.roll(GTA5_IDS, i, axis=1), seed=i)
    return root


@pytest.fixture
def synthia_root(tmp_path: Path) -> Path:
    root = tmp_path / "synthia"
    rng = np.random.default_rng(0)
    for i in range(2):
        classes = rng.choice([1, 2, 3, 4, 8, 10, 13, 22], size=(6, 9))
        instances = rng.integers(0, 4000, size=(6, 9))  # > 255: only a 16-bit reader keeps them
        write_image(root / "RGB" / f"{i:07d}.png", rng.integers(0, 256, (6, 9, 3), dtype=np.uint8))
        write_synthia_label(root / "GT" / "LABELS" / f"{i:07d}.png", classes, instances)
    return root


@pytest.fixture
def cityscapes_root(tmp_path: Path) -> Path:
    root = tmp_path / "cityscapes"
    for split, count in (("train", 2), ("val", 2)):
        for i in range(count):
            write_cityscapes_frame(root, split, "aachen", i, np.roll(GTA5_IDS, i, axis=0), seed=i)
    return root


# ---------------------------------------------------------------- a tiny toy pair and trained runs
@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    prepare_toy_pair(generate_toy_pair(root, seed=0, size=(64, 32), num_source=8, num_target_train=8, num_target_val=4))
    return root


def stage_flags(toy_root: Path, runs: Path, steps: int = 2) -> list[str]:
    return [
        "--source",
        "toy",
        "--source-root",
        toy_root / "gta5",
        "--target-root",
        toy_root / "cityscapes",
        "--runs-root",
        runs,
        "--steps",
        str(steps),
        "--crop",
        "32x32",
        "--batch-size",
        "2",
        "--val-limit",
        "2",
        "--checkpoint-every",
        "2",
        "--warmup-steps",
        "1",
    ]


@pytest.fixture(scope="session")
def pretrained_runs(toy_root, tmp_path_factory) -> Path:
    """A runs folder holding finished pretrain-ae and pretrain-ldm runs (made through the CLI)."""
    from cicld.cli import main

    runs = tmp_path_factory.mktemp("runs")
    for stage, extra in (("pretrain-ae", []), ("pretrain-ldm", ["--no-train-encoder"])):
        with pytest.raises(SystemExit) as exit_info:
            main([stage, *map(str, stage_flags(toy_root, runs)), *extra])
        assert exit_info.value.code == 0
    return runs
