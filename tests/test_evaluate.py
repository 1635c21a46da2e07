"""cicld evaluate: scores the default model on the run's target split; table, JSON and pictures."""

import json

from PIL import Image


def test_evaluate_scores_runs_latest_and_writes_json_and_pictures(cli, toy_root, pretrained_runs, tmp_path):
    out, json_file = tmp_path / "pictures", tmp_path / "scores.json"
    result = cli("evaluate", "--runs-root", pretrained_runs, "--json", json_file, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert "mIoU19" in result.stdout and "mIoU16" in result.stdout and "mIoU13" in result.stdout
    scores = json.loads(json_file.read_text())
    assert scores["images"] == 4 and scores["data"] == str(toy_root / "cityscapes")
    assert 0.0 <= scores["mIoU19"] <= 1.0 and len(scores["per_class_iou"]) == 19
    for name in ("confusion.png", "iou.png"):
        assert Image.open(out / name).size[0] > 300


def test_sliding_window_evaluation_gives_scores_too(cli, toy_root, pretrained_runs, tmp_path):
    json_file = tmp_path / "scores.json"
    result = cli(
        "evaluate", pretrained_runs / "latest", "--sliding", "--window", "32x32", "--overlap", "16x16",
        "--json", json_file, "--out", tmp_path,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert json.loads(json_file.read_text())["images"] == 4


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


def test_a_model_folder_copied_elsewhere_scores_exactly_as_in_place(cli, toy_root, pretrained_runs, tmp_path):
    import shutil

    from test_predict import _run_trained_at

    run = _run_trained_at(pretrained_runs, tmp_path / "runs" / "pretrain-ldm" / "toy-1", (64, 32))
    copied = shutil.copytree(run / "final", tmp_path / "elsewhere" / "my-model")
    scores = []
    for model in (run / "final", copied):
        json_file = tmp_path / "scores.json"
        result = cli("evaluate", model, "--data", toy_root / "cityscapes", "--limit", "2", "--json", json_file, "--out", tmp_path)
        assert result.exit_code == 0, result.stderr
        scores.append({k: v for k, v in json.loads(json_file.read_text()).items() if k != "model"})
    assert scores[0] == scores[1]
