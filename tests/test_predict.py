"""cicld predict: right sizes, modes and values per output; bad inputs handled as documented."""

import time

import numpy as np
import pytest
from PIL import Image

from cicld.data.labels import cityscapes_ids_to_train_ids, colorize
from cicld.data.pngio import write_image


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    write_image(folder / "a.png", rng.integers(0, 256, (32, 64, 3), dtype=np.uint8))
    write_image(folder / "nested" / "b.png", rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))  # not a multiple of 16
    return folder


def test_each_output_has_the_input_size_the_right_mode_and_consistent_values(cli, images, pretrained_runs, tmp_path):
    out = tmp_path / "out"
    result = cli("predict", images, out, "--runs-root", pretrained_runs)
    assert result.exit_code == 0, result.stderr
    for stem, size in (("a", (64, 32)), ("nested/b", (50, 40))):
        files = {kind: Image.open(out / f"{stem}_{kind}.png") for kind in ("trainIds", "labelIds", "color", "overlay")}
        assert {kind: im.size for kind, im in files.items()} == dict.fromkeys(files, size)
        assert (files["trainIds"].mode, files["labelIds"].mode, files["color"].mode, files["overlay"].mode) == (
            "L",
            "L",
            "RGB",
            "RGB",
        )
        train_ids = np.asarray(files["trainIds"])
        assert train_ids.max() < 19
        np.testing.assert_array_equal(cityscapes_ids_to_train_ids(np.asarray(files["labelIds"])), train_ids)
        np.testing.assert_array_equal(np.asarray(files["color"]), colorize(train_ids))


def test_outputs_can_be_chosen(cli, images, pretrained_runs, tmp_path):
    out = tmp_path / "out"
    assert cli("predict", images / "a.png", out, "--runs-root", pretrained_runs, "--outputs", "color").exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_color.png"]


def test_existing_outputs_are_not_overwritten_without_the_flag(cli, images, pretrained_runs, tmp_path):
    out = tmp_path / "out"
    assert cli("predict", images, out, "--runs-root", pretrained_runs).exit_code == 0
    before = (out / "a_color.png").read_bytes()
    result = cli("predict", images, out, "--runs-root", pretrained_runs)
    assert result.exit_code == 2 and "already exist" in result.stderr and "--overwrite" in result.stderr
    assert cli("predict", images, out, "--runs-root", pretrained_runs, "--overwrite").exit_code == 0
    assert (out / "a_color.png").read_bytes() == before  # same model, same image, deterministic


def test_non_images_are_skipped_with_a_warning(cli, images, pretrained_runs, tmp_path):
    (images / "notes.txt").write_text("not an image")
    result = cli("predict", images, tmp_path / "out", "--runs-root", pretrained_runs)
    assert result.exit_code == 0 and "skipping" in result.stdout and "notes.txt" in result.stdout


def test_predicting_a_folder_into_a_folder_inside_it_never_segments_its_own_outputs(
    cli, images, pretrained_runs, tmp_path
):
    out = images / "predictions"
    for _ in range(2):  # the second run finds the first one's outputs inside the input folder
        result = cli("predict", images, out, "--runs-root", pretrained_runs, "--overwrite")
        assert result.exit_code == 0, result.stderr
        assert "\n2 images segmented" in result.stdout, result.stdout
    assert not list(out.glob("predictions/**/*")) and not list(out.glob("**/*_color_color.png"))
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*_trainIds.png")) == [
        "a_trainIds.png",
        "nested/b_trainIds.png",
    ]


def test_a_broken_symbolic_link_among_the_inputs_is_skipped_with_a_warning(cli, images, pretrained_runs, tmp_path):
    (images / "gone.png").symlink_to(tmp_path / "nowhere.png")
    result = cli("predict", images, tmp_path / "out", "--runs-root", pretrained_runs)
    assert result.exit_code == 0, result.stderr
    assert (
        f"warning: skipping {images / 'gone.png'}: a broken symbolic link (to {tmp_path / 'nowhere.png'})"
        in " ".join(result.stdout.split())
    )


def test_a_corrupt_image_is_listed_the_rest_are_written_and_the_exit_code_says_so(
    cli, images, pretrained_runs, tmp_path
):
    (images / "broken.png").write_bytes((images / "a.png").read_bytes()[:100])
    out = tmp_path / "out"
    result = cli("predict", images, out, "--runs-root", pretrained_runs)
    assert result.exit_code == 1
    failed, error = result.stderr.strip().splitlines()  # the failures are listed above the error line, on stderr
    assert failed.startswith(f"failed: {images / 'broken.png'}: ")
    assert error == "error: 1 of 3 images could not be read (listed above); the others were written"
    assert (out / "a_trainIds.png").is_file() and (out / "nested" / "b_trainIds.png").is_file()


def test_globs_select_files(cli, images, pretrained_runs, tmp_path):
    out = tmp_path / "out"
    assert cli("predict", str(images / "**" / "b.png"), out, "--runs-root", pretrained_runs).exit_code == 0
    assert (out / "b_trainIds.png").is_file() and not (out / "a_trainIds.png").exists()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["nowhere", "out"], "nowhere does not exist"),
        (["only-one"], "give at least one input and the output folder"),
        (["*.nothing", "out"], "no file matches"),
    ],
)
def test_bad_inputs_are_one_line_errors(cli, pretrained_runs, tmp_path, monkeypatch, arguments, message):
    monkeypatch.chdir(tmp_path)
    result = cli("predict", *arguments, "--runs-root", pretrained_runs)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_unknown_output_kind_is_refused(cli, images, pretrained_runs, tmp_path):
    result = cli("predict", images, tmp_path / "out", "--runs-root", pretrained_runs, "--outputs", "color,depth")
    assert result.exit_code == 2 and "--outputs must name some of trainIds, labelIds, color, overlay" in result.stderr


def test_output_kinds_are_taken_in_any_case_as_the_file_names_spell_them(cli, images, pretrained_runs, tmp_path):
    out = tmp_path / "out"
    kinds = "trainIds,LabelIds,COLOR"
    result = cli("predict", images / "a.png", out, "--runs-root", pretrained_runs, "--outputs", kinds)
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a_color.png", "a_labelIds.png", "a_trainIds.png"]


def test_a_16_bit_greyscale_png_is_predicted_like_its_8_bit_twin(cli, pretrained_runs, tmp_path):
    grey = np.random.default_rng(1).integers(0, 256, (32, 64), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "eight.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")  # mode I;16, same picture
    out = tmp_path / "out"
    result = cli(
        "predict",
        tmp_path / "eight.png",
        tmp_path / "sixteen.png",
        out,
        "--runs-root",
        pretrained_runs,
        "--outputs",
        "trainids,overlay",
    )
    assert result.exit_code == 0, result.stderr
    for kind in ("trainIds", "overlay"):
        assert (out / f"sixteen_{kind}.png").read_bytes() == (out / f"eight_{kind}.png").read_bytes()


def test_a_model_folder_whose_config_has_a_wrongly_typed_value_is_a_one_line_error_naming_the_key(
    cli, images, tmp_path
):
    import json

    from cicld.models import CICLD, CICLDConfig

    CICLD(CICLDConfig.preset("tiny")).save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    (tmp_path / "model" / "config.json").write_text(json.dumps({**config, "latent_channels": "4"}))
    result = cli("predict", images, tmp_path / "out", "--checkpoint", tmp_path / "model")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: invalid model config: latent_channels must be an integer, got '4'"
    ]
    assert not (tmp_path / "out").exists()


def test_an_output_folder_that_cannot_be_created_is_refused_in_one_line_before_predicting(
    cli, images, pretrained_runs, tmp_path, monkeypatch
):
    import cicld.evaluation.predict

    monkeypatch.setattr(cicld.evaluation.predict, "predict_files", lambda *a, **k: pytest.fail("predicted"))
    (tmp_path / "taken").write_text("x")
    result = cli("predict", images, tmp_path / "taken" / "out", "--runs-root", pretrained_runs)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: output folder {tmp_path / 'taken' / 'out'} cannot be created: {tmp_path / 'taken'} is a file, "
        "not a folder"
    ]


def test_an_output_that_cannot_be_written_is_one_line_naming_the_file(
    cli, images, pretrained_runs, tmp_path, monkeypatch
):
    import cicld.evaluation.predict

    def refuse(path, array, palette=None):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cicld.evaluation.predict, "write_image", refuse)
    out = tmp_path / "out"
    result = cli("predict", images / "a.png", out, "--runs-root", pretrained_runs, "--outputs", "color")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: cannot write {out / 'a_color.png'}: Permission denied"]


def _run_trained_at(pretrained_runs, where, size):
    """A copy of the fixture's pretrain-ldm run as if trained with ``--target-resize size``: its
    training config says so, and so does its exported model (as export writes it)."""
    import json
    import shutil

    from cicld.training.runs import stage_runs

    (ldm_run,) = stage_runs(pretrained_runs, "pretrain-ldm")
    run = shutil.copytree(ldm_run, where)
    run_config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**run_config, "target_resize": list(size)}))
    model_config = json.loads((run / "final" / "config.json").read_text())
    if "input_size" in model_config:  # model folders exported before input_size existed lack it
        (run / "final" / "config.json").write_text(json.dumps({**model_config, "input_size": list(size)}))
    return run


def test_a_model_folder_copied_elsewhere_predicts_exactly_as_in_place(cli, images, pretrained_runs, tmp_path):
    import shutil

    run = _run_trained_at(pretrained_runs, tmp_path / "runs" / "pretrain-ldm" / "toy-1", (64, 32))
    copied = shutil.copytree(run / "final", tmp_path / "elsewhere" / "my-model")
    outputs = {}
    for name, model in (("in-place", run / "final"), ("copied", copied)):
        out = tmp_path / name
        result = cli("predict", images, out, "--checkpoint", model, "--outputs", "trainids")
        assert result.exit_code == 0, result.stderr
        outputs[name] = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*.png"))}
    assert len(outputs["copied"]) == 2 and outputs["copied"] == outputs["in-place"]


def test_the_model_folder_says_how_the_model_runs_and_flags_override_it(cli, images, pretrained_runs, tmp_path):
    import json

    run = _run_trained_at(pretrained_runs, tmp_path / "run", (64, 32))
    image = images / "nested" / "b.png"  # 50x40: at height 32 it runs at 48x32 (multiples of 16)
    default, flagged, other = tmp_path / "default", tmp_path / "flagged", tmp_path / "other"
    assert cli("predict", image, default, "--checkpoint", run / "final", "--outputs", "trainids").exit_code == 0
    assert (
        cli(
            "predict", image, flagged, "--checkpoint", run / "final", "--outputs", "trainids", "--height", "32"
        ).exit_code
        == 0
    )
    assert (default / "b_trainIds.png").read_bytes() == (flagged / "b_trainIds.png").read_bytes()
    model_config = json.loads((run / "final" / "config.json").read_text())
    (run / "final" / "config.json").write_text(json.dumps({**model_config, "input_size": None}))
    assert cli("predict", image, other, "--checkpoint", run / "final", "--outputs", "trainids").exit_code == 0
    assert (other / "b_trainIds.png").read_bytes() != (default / "b_trainIds.png").read_bytes()


def test_a_height_whose_class_scores_cannot_fit_in_memory_is_refused_in_one_line_before_it_runs(
    cli, images, pretrained_runs, tmp_path
):
    out = tmp_path / "out"
    started = time.perf_counter()
    result = cli("predict", images / "a.png", out, "--runs-root", pretrained_runs, "--height", "100000")
    assert time.perf_counter() - started < 30  # not minutes of allocating
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {images / 'a.png'} would be segmented at 200000x100000, ")
    assert "whose class scores alone take 1,520 GB" in line
    assert line.endswith("use a smaller --height")
    assert not out.exists() or not any(out.iterdir())
