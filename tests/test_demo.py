"""`cicld demo`: the whole pipeline in one command, reusing and resuming its stages.

These run the real pipeline with `--quick` (a 64×32 toy pair, four steps per stage): they check
the plumbing, the files and the reporting. Whether the full demo *learns* is measured by
`benchmarks/uda_toy.py` and documented in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cicld.data.pngio import read_image

pytestmark = pytest.mark.usefixtures("single_thread")

STAGE_LINES = ("pretrain-ae", "pretrain-ldm", "adapt (CICLD)")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, single_thread):
    """One quick demo; returns (out folder, CliResult). Later tests re-run it in place."""
    from cicld.cli import main

    out = tmp_path_factory.mktemp("demo") / "out"
    code, captured = _run_main(main, "demo", "--quick", "--out", str(out), "-j", "1")
    return out, code, captured


def _run_main(main, *args):
    import contextlib
    import io

    stdout = io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout):
            main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, stdout.getvalue()


def test_demo_runs_every_stage_and_reports_both_models(demo_run):
    out, code, stdout = demo_run
    assert code == 0, stdout
    for stage in ("toy pair", *STAGE_LINES, "evaluate", "predict"):
        assert f"✓ {stage} (" in stdout
    assert "source-only" in stdout and "CICLD" in stdout and "mIoU19" in stdout
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"source-only", "CICLD"}
    # The source-only model is pretrain-ldm's, and CICLD adapts exactly that model.
    (ldm_run,) = (out / "runs" / "pretrain-ldm").iterdir()
    (adapt_run,) = (out / "runs" / "adapt").iterdir()
    assert Path(results["source-only"]["model"]) == ldm_run / "final"
    assert json.loads((adapt_run / "config.json").read_text())["init_from"] == str(ldm_run / "final")
    for name, scores in results.items():
        written = json.loads((out / "evaluation" / name.lower() / "scores.json").read_text())
        present = [iou for iou in written["per_class_iou"].values() if iou is not None]
        assert scores["mIoU19"] == written["mIoU19"] == pytest.approx(sum(present) / len(present))
        assert (out / "evaluation" / name.lower() / "scores.json").is_file()
        assert (out / "evaluation" / name.lower() / "iou.png").is_file()
        assert (Path(scores["model"]) / "model.safetensors").is_file()


def test_demo_writes_a_side_by_side_picture_of_input_truth_and_both_models(demo_run):
    out, _, _ = demo_run
    picture = read_image(out / "comparison.png")
    # Four columns (input, ground truth, source-only, CICLD) of 64×32 images with 4-pixel gaps
    # and an 18-pixel title row; one row per toy val image (four in --quick).
    assert picture.shape == (18 + 4 * (32 + 4) - 4, 4 * 64 + 3 * 4, 3)
    first_input = picture[18 : 18 + 32, 0:64]
    val_images = sorted((out / "data/toy-seed0-quick/cityscapes/leftImg8bit/val").rglob("*.png"))
    assert np.array_equal(first_input, read_image(val_images[0], "RGB"))
    predictions = sorted(p.relative_to(out / "predictions") for p in (out / "predictions").rglob("*.png"))
    assert len(predictions) == 2 * 4 * 2  # two models, four images, colour + overlay
    first = val_images[0].stem
    assert {Path("cicld") / f"{first}_color.png", Path("source-only") / f"{first}_overlay.png"} <= set(predictions)


def test_a_second_run_reuses_every_finished_stage(demo_run):
    from cicld.cli import main

    out, _, _ = demo_run
    code, stdout = _run_main(main, "demo", "--quick", "--out", str(out), "-j", "1")
    assert code == 0, stdout
    assert stdout.count("reused the finished run") == len(STAGE_LINES)


def test_an_interrupted_stage_is_resumed_from_its_last_checkpoint(demo_run):
    from cicld.cli import main

    out, _, _ = demo_run
    (run,) = (out / "runs" / "adapt").iterdir()
    # As if killed between the checkpoint at step 2 and the end: no final/, no step-4 checkpoint.
    shutil.rmtree(run / "final")
    for checkpoint in (run / "checkpoints").iterdir():
        if not checkpoint.name.endswith("00002"):
            shutil.rmtree(checkpoint)
    code, stdout = _run_main(main, "demo", "--quick", "--out", str(out), "-j", "1")
    assert code == 0, stdout
    assert "(resumed)" in stdout
    assert (run / "final" / "model.safetensors").is_file()
    assert stdout.count("reused the finished run") == len(STAGE_LINES) - 1


def test_another_seed_in_the_same_folder_gets_its_own_toy_pair_and_runs(demo_run):
    from cicld.cli import main

    out, _, _ = demo_run
    code, stdout = _run_main(main, "demo", "--quick", "--out", str(out), "--seed", "1", "-j", "1")
    assert code == 0, stdout
    assert "reused" not in stdout  # nothing of seed 0 is taken for seed 1
    assert (out / "data/toy-seed1-quick/toy.json").is_file() and (out / "data/toy-seed0-quick/toy.json").is_file()
    assert json.loads((out / "data/toy-seed1-quick/toy.json").read_text())["seed"] == 1


def test_an_output_folder_that_is_a_file_is_a_one_line_error(cli, tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    result = cli("demo", "--quick", "--out", blocker)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
