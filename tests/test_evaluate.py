"""cicld evaluate: scores the default model on the run's target split; table, JSON and pictures."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image


def test_evaluate_scores_runs_latest_and_writes_json_and_pictures(cli, toy_root, pretrained_runs, tmp_path):
    out, json_file = tmp_path / "pictures", tmp_path / "scores.json"
    result = cli("evaluate", "--runs-root", pretrained_runs, "--json", json_file, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert "mIoU19" in result.stdout and "mIoU16" in result.stdout and "mIoU13" in result.stdout
    scores = json.loads(json_file.read_text())
    assert scores["images"] == 4 and scores["data"] == str(toy_root / "cityscapes")
    assert len(scores["per_class_iou"]) == 19
    # mIoU19 is the mean over the classes present (a class absent from labels and predictions: null)
    present = [iou for iou in scores["per_class_iou"].values() if iou is not None]
    assert 0 < len(present) <= 19 and scores["mIoU19"] == pytest.approx(sum(present) / len(present))
    assert f"{100 * scores['mIoU19']:.2f}" in result.stdout
    for name in ("confusion.png", "iou.png"):
        assert Image.open(out / name).size[0] > 300


def test_sliding_window_evaluation_gives_scores_too(cli, toy_root, pretrained_runs, tmp_path):
    json_file = tmp_path / "scores.json"
    result = cli(
        "evaluate",
        pretrained_runs / "latest",
        "--sliding",
        "--window",
        "32x32",
        "--overlap",
        "16x16",
        "--json",
        json_file,
        "--out",
        tmp_path,
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(json_file.read_text())["images"] == 4


def test_a_sliding_window_is_given_as_width_and_height_and_run_that_wide_and_that_tall(pretrained_runs, monkeypatch):
    import torch

    from cicld.evaluation.evaluate import InferenceOptions
    from cicld.models import CICLD

    model = CICLD.from_pretrained(pretrained_runs / "latest").eval()
    ran = []
    predict_padded = CICLD._predict_padded

    def recorded(self, images, *args):
        ran.extend([tuple(images.shape[-2:])] * len(images))  # windows run window_batch at a time
        return predict_padded(self, images, *args)

    monkeypatch.setattr(CICLD, "_predict_padded", recorded)
    images = torch.zeros(1, 3, 32, 64)  # 64 wide, 32 tall
    options = InferenceOptions(sliding=True, window=(64, 16), overlap=(0, 0))
    assert options.logits(model, images).shape == (1, 19, 32, 64)
    assert ran == [(16, 64), (16, 64)]  # two windows, each 64 wide and 16 tall (a tensor's H, W)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--window", "40x32"], "sliding window 40x32 (WIDTHxHEIGHT) must be positive multiples of 16 for this model"),
        (
            ["--window", "64x32", "--overlap", "8x32"],
            "window overlap 8x32 (WIDTHxHEIGHT) must be multiples of 8 smaller than the window 64x32",
        ),
    ],
)
def test_a_window_the_model_cannot_tile_is_one_line_naming_it_as_given(cli, pretrained_runs, tmp_path, flags, message):
    result = cli("evaluate", pretrained_runs / "latest", "--sliding", *flags, "--out", tmp_path)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: {message}"]


def test_scores_that_are_undefined_are_null_in_the_json_never_nan(cli, toy_root, pretrained_runs, tmp_path):
    from cicld.data.pngio import read_image, write_image

    data = tmp_path / "cityscapes"
    shutil.copytree(toy_root / "cityscapes", data)
    for label in (data / "gtFine" / "val").rglob("*_labelTrainIds.png"):  # nothing but ignore pixels
        write_image(label, np.full_like(read_image(label), 255))
    json_file = tmp_path / "scores.json"
    result = cli(
        "evaluate", pretrained_runs / "latest", "--data", data, "--json", json_file, "--out", tmp_path / "pictures"
    )
    assert result.exit_code == 0, result.stderr
    scores = json.loads(json_file.read_text(), parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert [scores[k] for k in ("mIoU19", "mIoU16", "mIoU13", "pixel_accuracy")] == [None] * 4
    assert list(scores["per_class_iou"].values()) == [None] * 19
    assert "nan" not in result.stdout.lower()


def test_no_model_anywhere_is_a_one_line_hint(cli, tmp_path):
    result = cli("evaluate", "--runs-root", tmp_path / "runs")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: no finished run in {tmp_path / 'runs'}/ (no {tmp_path / 'runs' / 'latest'}); "
        "train one with `cicld adapt` or name a CHECKPOINT"
    ]


def test_a_folder_that_is_not_a_model_is_refused(cli, tmp_path):
    result = cli("evaluate", tmp_path)
    assert result.exit_code == 2 and "neither a model folder" in result.stderr


@pytest.fixture
def evaluation_must_not_run(monkeypatch):
    """Fail the test if the evaluation starts: bad outputs must be refused before it."""
    import cicld.evaluation.evaluate

    def evaluate_model(*args, **kwargs):
        raise AssertionError("the evaluation ran although its outputs cannot be written")

    monkeypatch.setattr(cicld.evaluation.evaluate, "evaluate_model", evaluate_model)


@pytest.mark.parametrize(
    "make, flags, message",
    [
        (lambda tmp: (tmp / "taken").write_text("x"), ["--out", "taken"], "--out {tmp}/taken is a file, not a folder"),
        (
            lambda tmp: (tmp / "taken").write_text("x"),
            ["--out", "taken/pictures"],
            "--out {tmp}/taken/pictures cannot be created: {tmp}/taken is a file, not a folder",
        ),
        (
            lambda tmp: (tmp / "scores").mkdir(),
            ["--json", "scores"],
            "--json {tmp}/scores is a folder; give a file name",
        ),
        (
            lambda tmp: (tmp / "taken").write_text("x"),
            ["--json", "taken/scores.json"],
            "--json {tmp}/taken/scores.json cannot be created: {tmp}/taken is a file, not a folder",
        ),
    ],
    ids=["out-is-a-file", "out-inside-a-file", "json-is-a-folder", "json-inside-a-file"],
)
def test_outputs_that_cannot_be_written_are_refused_in_one_line_before_the_evaluation_runs(
    cli, pretrained_runs, tmp_path, evaluation_must_not_run, make, flags, message
):
    make(tmp_path)
    flags = [str(tmp_path / f) if not f.startswith("--") else f for f in flags]
    result = cli("evaluate", "--runs-root", pretrained_runs, "--out", tmp_path / "pictures", *flags)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == ["error: " + message.format(tmp=tmp_path)]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_out_folder_without_write_permission_is_refused_before_the_evaluation_runs(
    cli, pretrained_runs, tmp_path, evaluation_must_not_run
):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    result = cli("evaluate", "--runs-root", pretrained_runs, "--out", locked / "pictures")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --out {locked / 'pictures'} cannot be written: no permission to write in {locked}"
    ]


def test_a_write_that_fails_after_the_evaluation_is_one_line_naming_the_file(
    cli, pretrained_runs, tmp_path, monkeypatch
):
    import cicld.cli.evaluate

    def refuse(path, write):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cicld.cli.evaluate, "atomic_write", refuse, raising=False)
    result = cli(
        "evaluate", "--runs-root", pretrained_runs, "--out", tmp_path / "pictures", "--json", tmp_path / "scores.json"
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: cannot write {tmp_path / 'scores.json'}: Permission denied"]


def test_a_model_folder_copied_elsewhere_scores_exactly_as_in_place(cli, toy_root, pretrained_runs, tmp_path):
    import shutil

    from test_predict import _run_trained_at

    run = _run_trained_at(pretrained_runs, tmp_path / "runs" / "pretrain-ldm" / "toy-1", (64, 32))
    copied = shutil.copytree(run / "final", tmp_path / "elsewhere" / "my-model")
    scores = []
    for model in (run / "final", copied):
        json_file = tmp_path / "scores.json"
        result = cli(
            "evaluate", model, "--data", toy_root / "cityscapes", "--limit", "2", "--json", json_file, "--out", tmp_path
        )
        assert result.exit_code == 0, result.stderr
        scores.append({k: v for k, v in json.loads(json_file.read_text()).items() if k != "model"})
    assert scores[0] == scores[1]
