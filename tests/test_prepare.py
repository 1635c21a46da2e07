"""prepare-data writes DAFormer-compatible trainIds and class stats, idempotently, for every format."""

import json

import numpy as np
import pytest
from PIL import Image

from cicld.data.labels import cityscapes_ids_to_train_ids
from cicld.data.pngio import read_image
from cicld.data.prepare import SizeMismatchPolicy, find_frames, prepare_dataset

from conftest import GTA5_IDS, write_gta5_frame


def _prepare(root, dataset, **kwargs):
    return prepare_dataset(find_frames(root, dataset), **kwargs)


def test_gta5_palette_indices_become_train_ids(gta5_root):
    report = _prepare(gta5_root, "gta5")
    assert report.converted == 3 and not report.failures
    train_ids = read_image(gta5_root / "labels" / "00000_labelTrainIds.png")
    assert Image.open(gta5_root / "labels" / "00000_labelTrainIds.png").mode == "L"
    np.testing.assert_array_equal(train_ids, cityscapes_ids_to_train_ids(GTA5_IDS))
    assert train_ids[1, 3] == 255  # label id 0 ("unlabeled") is ignored


def test_class_stats_are_written_in_daformers_format(gta5_root):
    _prepare(gta5_root, "gta5")
    stats = json.loads((gta5_root / "sample_class_stats.json").read_text())
    first = stats[0]
    assert first["file"] == "labels/00000_labelTrainIds.png"
    train_ids = cityscapes_ids_to_train_ids(GTA5_IDS)
    expected = {str(c): int((train_ids == c).sum()) for c in np.unique(train_ids) if c != 255}
    assert {k: v for k, v in first.items() if k != "file"} == expected
    by_file = json.loads((gta5_root / "sample_class_stats_dict.json").read_text())
    assert by_file["labels/00000_labelTrainIds.png"] == expected
    with_class = json.loads((gta5_root / "samples_with_class.json").read_text())
    assert ["labels/00000_labelTrainIds.png", expected["13"]] in with_class["13"]


def test_a_second_run_skips_every_frame_and_writes_the_same_stats(gta5_root):
    _prepare(gta5_root, "gta5")
    before = (gta5_root / "sample_class_stats.json").read_bytes()
    report = _prepare(gta5_root, "gta5")
    assert (report.converted, report.skipped) == (0, 3)
    assert (gta5_root / "sample_class_stats.json").read_bytes() == before


def test_an_interrupted_run_resumes_with_only_the_missing_frames(gta5_root):
    _prepare(gta5_root, "gta5")
    complete = (gta5_root / "sample_class_stats.json").read_bytes()
    # What a run killed after its first frame leaves behind: one trainId file and no stats.
    for name in ("00001_labelTrainIds.png", "00002_labelTrainIds.png"):
        (gta5_root / "labels" / name).unlink()
    (gta5_root / "sample_class_stats.json").unlink()
    report = _prepare(gta5_root, "gta5")
    assert (report.converted, report.skipped) == (2, 1)
    assert (gta5_root / "sample_class_stats.json").read_bytes() == complete


def test_two_workers_give_the_same_files_as_one(gta5_root, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(gta5_root, copy)
    _prepare(gta5_root, "gta5", workers=1)
    _prepare(copy, "gta5", workers=2)
    for name in ("sample_class_stats.json", "labels/00002_labelTrainIds.png"):
        assert (gta5_root / name).read_bytes() == (copy / name).read_bytes()


def test_a_label_of_another_size_is_resized_to_its_image_and_counted(gta5_root):
    write_gta5_frame(gta5_root, "00003", GTA5_IDS, image_size=(8, 6))
    report = _prepare(gta5_root, "gta5")
    assert report.size_mismatched == 1 and report.converted == 4
    resized = read_image(gta5_root / "labels" / "00003_labelTrainIds.png")
    assert resized.shape == (6, 8)
    assert set(np.unique(resized)) <= set(np.unique(cityscapes_ids_to_train_ids(GTA5_IDS)))


def test_the_skip_policy_leaves_size_mismatched_frames_out(gta5_root):
    write_gta5_frame(gta5_root, "00003", GTA5_IDS, image_size=(8, 6))
    report = _prepare(gta5_root, "gta5", policy=SizeMismatchPolicy.skip)
    assert report.mismatch_skipped == 1 and report.converted == 3
    assert not (gta5_root / "labels" / "00003_labelTrainIds.png").exists()
    files = [e["file"] for e in json.loads((gta5_root / "sample_class_stats.json").read_text())]
    assert "labels/00003_labelTrainIds.png" not in files


def test_frames_missing_a_partner_are_reported_not_converted(gta5_root):
    (gta5_root / "images" / "00001.png").unlink()
    (gta5_root / "labels" / "00002.png").rename(gta5_root / "labels" / "00009.png")
    frames = find_frames(gta5_root, "gta5")
    assert [s.name for s in frames.samples] == ["00000"]
    assert sorted(p.name for p in frames.missing_partner) == ["00001.png", "00002.png", "00009.png"]


def test_synthia_16bit_class_ids_become_train_ids(synthia_root):
    from cicld.data.labels import synthia_ids_to_train_ids

    from conftest import write_synthia_label

    classes = np.array([[3, 4, 2, 8], [10, 1, 22, 13]])
    write_synthia_label(synthia_root / "GT" / "LABELS" / "0000000.png", classes, np.full(classes.shape, 1234))
    from cicld.data.pngio import write_image

    write_image(synthia_root / "RGB" / "0000000.png", np.zeros((2, 4, 3), np.uint8))
    report = _prepare(synthia_root, "synthia")
    assert report.converted == 2 and not report.failures
    train_ids = read_image(synthia_root / "GT" / "LABELS" / "0000000_labelTrainIds.png")
    np.testing.assert_array_equal(train_ids, [[0, 1, 2, 13], [11, 10, 255, 255]])
    np.testing.assert_array_equal(train_ids, synthia_ids_to_train_ids(classes))


def test_an_8bit_synthia_label_is_refused_as_the_wrong_kind_of_file(synthia_root):
    from cicld.data.pngio import write_image

    write_image(synthia_root / "GT" / "LABELS" / "0000001.png", np.full((6, 9, 3), 3, np.uint8))
    report = _prepare(synthia_root, "synthia")
    assert [name for name, _ in report.failures] == ["0000001"]
    assert "16-bit" in report.failures[0][1]
    assert not (synthia_root / "sample_class_stats.json").exists()


@pytest.mark.parametrize("dataset", ["gta5", "cityscapes"])
def test_a_lossy_jpeg_label_is_refused_in_one_line_naming_the_file(gta5_root, cityscapes_root, dataset):
    root = gta5_root if dataset == "gta5" else cityscapes_root
    label = find_frames(root, dataset).samples[0].label
    ids = read_image(label)
    Image.fromarray(ids).save(label, format="JPEG", quality=95)  # greyscale JPEG, still named .png
    report = _prepare(root, dataset)
    (failure,) = report.failures
    assert failure[1].startswith(f"{label} is a JPEG file, not a PNG; {dataset} labels are ")
    assert "\n" not in failure[1]
    assert not (root / "sample_class_stats.json").exists()


def test_a_label_with_a_flipped_bit_is_reported_not_converted(gta5_root):
    label = gta5_root / "labels" / "00001.png"
    blob = bytearray(label.read_bytes())
    blob[blob.index(b"IDAT") + 4 + 3] ^= 0x01
    label.write_bytes(bytes(blob))
    report = _prepare(gta5_root, "gta5")
    assert report.failures == [("00001", f"{label} is corrupt (checksum error in the IDAT chunk)")]


def test_cityscapes_train_and_val_are_converted_with_stats_for_train_only(cityscapes_root):
    report = _prepare(cityscapes_root, "cityscapes")
    assert report.converted == 4
    val = cityscapes_root / "gtFine" / "val" / "aachen" / "aachen_000000_000001_gtFine_labelTrainIds.png"
    np.testing.assert_array_equal(read_image(val), cityscapes_ids_to_train_ids(np.roll(GTA5_IDS, 1, axis=0)))
    files = [e["file"] for e in json.loads((cityscapes_root / "sample_class_stats.json").read_text())]
    assert files == [
        "gtFine/train/aachen/aachen_000000_000000_gtFine_labelTrainIds.png",
        "gtFine/train/aachen/aachen_000000_000001_gtFine_labelTrainIds.png",
    ]


def test_cityscapes_images_without_labels_are_reported_as_missing_partners(cityscapes_root):
    from conftest import write_cityscapes_frame

    write_cityscapes_frame(cityscapes_root, "train", "bonn", 5, None)
    frames = find_frames(cityscapes_root, "cityscapes")
    assert len(frames.samples) == 4
    assert [p.name for p in frames.missing_partner] == ["bonn_000000_000005_leftImg8bit.png"]


@pytest.mark.parametrize("dataset", ["gta5", "synthia", "cityscapes"])
def test_a_folder_of_another_dataset_names_what_is_missing(cityscapes_root, dataset):
    from cicld.errors import DataError

    if dataset == "cityscapes":
        with pytest.raises(DataError, match="not a cityscapes dataset: missing leftImg8bit/train/"):
            find_frames(cityscapes_root / "gtFine", dataset)
    else:
        with pytest.raises(DataError, match=f"not a {dataset} dataset: missing"):
            find_frames(cityscapes_root, dataset)


def test_frames_skipped_for_a_size_mismatch_are_left_out_of_training_not_asked_for(gta5_root):
    from cicld.data.datasets import SourceDataset, ValDataset
    from cicld.data.sampling import RareClassSampler

    write_gta5_frame(gta5_root, "00003", GTA5_IDS, image_size=(8, 6))
    _prepare(gta5_root, "gta5", policy=SizeMismatchPolicy.skip)
    sampler = RareClassSampler(gta5_root, min_pixels=1)
    data = SourceDataset(gta5_root, "gta5", crop=(4, 3), rare_class_sampling=sampler)
    assert [s.name for s in data.samples] == ["00000", "00001", "00002"]
    assert {data[i]["name"] for i in range(len(data))} <= {"00000", "00001", "00002"}
    assert [s.name for s in ValDataset(gta5_root, "gta5").samples] == ["00000", "00001", "00002"]


def test_preparing_again_with_resize_brings_a_skipped_frame_back(gta5_root):
    from cicld.data.datasets import SourceDataset

    write_gta5_frame(gta5_root, "00003", GTA5_IDS, image_size=(8, 6))
    _prepare(gta5_root, "gta5", policy=SizeMismatchPolicy.skip)
    assert json.loads((gta5_root / "skipped_frames.json").read_text()) == ["00003"]
    report = _prepare(gta5_root, "gta5")
    assert report.converted == 1 and not (gta5_root / "skipped_frames.json").exists()
    assert [s.name for s in SourceDataset(gta5_root, "gta5").samples] == ["00000", "00001", "00002", "00003"]


def test_a_frame_missing_its_train_ids_without_being_skipped_is_still_an_error(gta5_root):
    from cicld.data.datasets import SourceDataset
    from cicld.errors import DataError

    write_gta5_frame(gta5_root, "00003", GTA5_IDS, image_size=(8, 6))
    _prepare(gta5_root, "gta5", policy=SizeMismatchPolicy.skip)
    (gta5_root / "labels" / "00001_labelTrainIds.png").unlink()
    with pytest.raises(DataError, match="1 of 3 gta5 labels have no prepared trainIds file"):
        SourceDataset(gta5_root, "gta5")
