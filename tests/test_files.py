"""cicld.files: every file is written atomically, and a failed write is one line naming the file."""

import os
import stat

import pytest

from cicld.errors import CicldError, DataError
from cicld.files import atomic_write, replacing, writing


def test_bytes_text_or_a_writer_are_written_creating_the_folders_above(tmp_path):
    atomic_write(tmp_path / "a" / "bytes.bin", b"\x00\x01")
    atomic_write(tmp_path / "a" / "text.json", '{"é": 1}\n')
    atomic_write(tmp_path / "b" / "c" / "written.txt", lambda handle: handle.write(b"by the writer"))
    assert (tmp_path / "a" / "bytes.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "a" / "text.json").read_text(encoding="utf-8") == '{"é": 1}\n'
    assert (tmp_path / "b" / "c" / "written.txt").read_bytes() == b"by the writer"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["bytes.bin", "text.json", "written.txt"]


def test_an_interrupted_write_leaves_neither_the_file_nor_a_temporary(tmp_path):
    def fail_half_way(handle):
        handle.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "out.png", fail_half_way)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_rewrite_keeps_the_old_file_whole(tmp_path):
    atomic_write(tmp_path / "log.csv", "step\n1\n")

    def disk_full(handle):
        handle.write(b"step\n")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(tmp_path / "log.csv", disk_full)
    assert (tmp_path / "log.csv").read_text() == "step\n1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["log.csv"]


def test_a_durable_write_reaches_the_disk_before_the_rename(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(os, "fsync", lambda descriptor: synced.append(not (tmp_path / "log.csv").exists()))
    atomic_write(tmp_path / "log.csv", "step\n", durable=True)
    atomic_write(tmp_path / "image.png", b"not synced")
    assert synced == [True]


def test_a_writer_that_wants_a_file_name_gets_a_temporary_beside_the_file(tmp_path):
    mask = os.umask(0o022)
    try:
        with replacing(tmp_path / "model.safetensors") as temporary:
            assert temporary.parent == tmp_path and temporary.name != "model.safetensors"
            assert not (tmp_path / "model.safetensors").exists()
            temporary.write_bytes(b"weights")
    finally:
        os.umask(mask)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    assert (tmp_path / "model.safetensors").read_bytes() == b"weights"
    assert stat.S_IMODE((tmp_path / "model.safetensors").stat().st_mode) == 0o644  # not mkstemp's 0600


def test_an_os_error_while_writing_is_one_line_naming_the_file_and_leaves_no_temporary(tmp_path):
    def disk_full(handle):
        raise OSError(28, "No space left on device")

    path = tmp_path / "scores.json"
    with pytest.raises(CicldError) as raised:
        with writing(path):
            atomic_write(path, disk_full)
    assert str(raised.value) == f"cannot write {path}: No space left on device"
    assert list(tmp_path.iterdir()) == []


def test_the_error_class_and_the_words_for_what_is_written_can_be_chosen(tmp_path):
    with pytest.raises(DataError, match=r"^cannot write the toy pair to /data/toy: Permission denied$"):
        with writing("the toy pair to /data/toy", DataError):
            raise PermissionError(13, "Permission denied")
    with pytest.raises(CicldError, match=r"^cannot write x: an error without errno$"):
        with writing("x"):
            raise OSError("an error without errno")


def test_errors_other_than_os_errors_pass_through(tmp_path):
    with pytest.raises(ValueError):
        with writing(tmp_path / "x"):
            raise ValueError("a bug, not the disk")
