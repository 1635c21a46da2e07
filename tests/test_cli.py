"""The command line: help and version, and one clear stderr line with a non-zero exit for bad input."""

import numpy as np
import pytest

from cicld.data.pngio import write_image

from conftest import run_cicld_process


def assert_one_line_error(result, *fragments):
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_lists_the_commands(cli):
    result = cli("--help")
    assert result.exit_code == 0
    assert "prepare-data" in result.stdout


def test_version_prints_the_package_version(cli):
    from cicld import __version__

    result = cli("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"cicld {__version__}"


def test_prepare_data_converts_a_dataset_and_prints_a_summary(cli, gta5_root):
    result = cli("prepare-data", "gta5", gta5_root)
    assert result.exit_code == 0, result.stderr
    assert "converted" in result.stdout and "class pixel shares" in result.stdout
    assert (gta5_root / "sample_class_stats.json").is_file()


def test_empty_folder(cli, tmp_path):
    assert_one_line_error(cli("prepare-data", "gta5", tmp_path), "not a gta5 dataset", "missing images/, labels/")


def test_dataset_folders_without_any_image(cli, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    assert_one_line_error(cli("prepare-data", "gta5", tmp_path), "has no PNG images")


def test_missing_folder(cli, tmp_path):
    assert_one_line_error(cli("prepare-data", "cityscapes", tmp_path / "nowhere"), "does not exist")


def test_wrong_dataset(cli, gta5_root):
    assert_one_line_error(
        cli("prepare-data", "cityscapes", gta5_root), "not a cityscapes dataset", "leftImg8bit/train/"
    )


def test_corrupt_png_label(cli, gta5_root):
    (gta5_root / "labels" / "00001.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    result = cli("prepare-data", "gta5", gta5_root)
    assert_one_line_error(result, "1 of 3 gta5 frames could not be prepared", "00001.png")
    assert not (gta5_root / "sample_class_stats.json").exists()  # never passed off as prepared
    assert (gta5_root / "labels" / "00000_labelTrainIds.png").is_file()  # the good frames are kept


def test_truncated_label_file(cli, gta5_root):
    path = gta5_root / "labels" / "00002.png"
    path.write_bytes(path.read_bytes()[:60])
    assert_one_line_error(cli("prepare-data", "gta5", gta5_root), "00002.png", "truncated")


def test_truncated_image_file(cli, gta5_root):
    path = gta5_root / "images" / "00000.png"
    write_image(path, np.random.default_rng(0).integers(0, 256, (3, 4, 3), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-30])
    assert_one_line_error(cli("prepare-data", "gta5", gta5_root), "images/00000.png")


def test_label_of_the_wrong_mode(cli, gta5_root):
    # An RGB colour rendering of a GTA5 label holds colours, not ids: refuse it rather than guess.
    write_image(gta5_root / "labels" / "00000.png", np.zeros((3, 4, 3), np.uint8))
    assert_one_line_error(cli("prepare-data", "gta5", gta5_root), "image mode RGB", "palette")


def test_unwritable_output_of_a_dataset(cli, gta5_root):
    # A directory where a trainId file must go cannot be written over, even by root.
    (gta5_root / "labels" / "00001_labelTrainIds.png").mkdir()
    assert_one_line_error(cli("prepare-data", "gta5", gta5_root), "cannot write", "00001_labelTrainIds.png")


def test_unwritable_output_of_the_toy_generator(cli):
    assert_one_line_error(cli("prepare-data", "toy", "/proc/cicld-toy"), "/proc/cicld-toy")


def test_toy_options_on_a_real_dataset(cli, gta5_root):
    assert_one_line_error(
        cli("prepare-data", "gta5", gta5_root, "--seed", "3"), "--seed only apply to `prepare-data toy`"
    )
    assert_one_line_error(
        cli("prepare-data", "gta5", gta5_root, "--generic", "5"), "--generic only apply to `prepare-data toy`"
    )


def test_bad_flag_value(cli, gta5_root):
    assert_one_line_error(cli("prepare-data", "gta5", gta5_root, "--workers", "0"), "--workers")


def test_unknown_flag(cli, gta5_root):
    assert_one_line_error(cli("prepare-data", "gta5", gta5_root, "--colour"), "No such option: --colour")


def test_unknown_dataset_name(cli):
    assert_one_line_error(cli("prepare-data", "kitti"), "kitti")


def test_a_real_process_shows_one_line_and_no_traceback(tmp_path):
    process = run_cicld_process("prepare-data", "synthia", tmp_path)
    assert process.returncode == 2
    assert process.stderr.strip().splitlines() == [
        f"error: {tmp_path} is not a synthia dataset: missing RGB/, GT/LABELS/"
    ]


@pytest.mark.slow
def test_toy_chain_generates_then_prepare_data_skips_what_is_done(cli, tmp_path):
    root = tmp_path / "toy"
    first = cli("prepare-data", "toy", root, "--size", "64x32", "-j", "2")
    assert first.exit_code == 0, first.stderr
    assert (root / "gta5" / "sample_class_stats.json").is_file() and (
        root / "cityscapes" / "sample_class_stats.json"
    ).is_file()
    for dataset in ("gta5", "cityscapes"):
        again = cli("prepare-data", dataset, root / dataset)
        assert again.exit_code == 0, again.stderr
        assert "skipped (already prepared)" in again.stdout
    other = cli("prepare-data", "toy", root, "--size", "64x32", "--seed", "1")
    assert other.exit_code == 2 and "other parameters" in other.stderr and "--overwrite" in other.stderr
    assert cli("prepare-data", "toy", root, "--size", "64x32", "--seed", "1", "--overwrite").exit_code == 0
    generic = cli("prepare-data", "toy", root, "--size", "64x32", "--seed", "1", "--generic", "3")
    assert generic.exit_code == 0, generic.stderr
    assert "3 frames rendered" in generic.stdout and "pretrain-ldm --source toy --source-root" in generic.stdout
    assert (root / "generic" / "sample_class_stats.json").is_file()


@pytest.mark.parametrize(
    "command",
    [["prepare-data", "toy", "{tmp}/toy"], ["demo", "--quick", "--out", "{tmp}/demo"]],
    ids=["prepare-data", "demo"],
)
def test_a_negative_seed_is_a_one_line_error_before_anything_is_created(cli, tmp_path, command):
    result = cli(*[part.format(tmp=tmp_path) for part in command], "--seed", "-1")
    assert_one_line_error(result, "--seed")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "command",
    [["adapt", "--runs-root", "{tmp}/runs"], ["demo", "--quick", "--out", "{tmp}/demo"]],
    ids=["adapt", "demo"],
)
def test_a_seed_too_large_for_the_random_generators_is_a_one_line_error_before_anything_is_created(
    cli, tmp_path, command
):
    result = cli(*[part.format(tmp=tmp_path) for part in command], "--seed", "1180591620717411303424")
    assert_one_line_error(result, "--seed must be between 0 and 4294967295, got 1180591620717411303424")
    assert list(tmp_path.iterdir()) == []


def test_a_toy_size_too_large_to_render_is_a_one_line_error_before_anything_is_created(cli, tmp_path):
    result = cli("prepare-data", "toy", tmp_path / "toy", "--size", "100000x100000")
    assert_one_line_error(result, "toy image size 100000x100000 is too large; use at most 4096x4096")
    assert list(tmp_path.iterdir()) == []  # no toy.json that would hold the folder for another size


def test_ctrl_c_in_any_command_prints_one_line_and_exits_130(cli, tmp_path, monkeypatch):
    from cicld.data import toy

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(toy, "generate_toy_pair", interrupted)
    result = cli("prepare-data", "toy", tmp_path / "toy")
    assert result.exit_code == 130
    assert result.stderr.strip().splitlines() == [
        "error: interrupted; finished files are kept and a re-run resumes where this one stopped"
    ]
