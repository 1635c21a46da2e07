"""Specification of the torch datasets over prepared GTA5 / SYNTHIA / Cityscapes folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _fixtures_data import (
    image_for,
    label_from_red,
    make_cityscapes,
    make_gta5,
    make_synthia,
    stripes,
    write_class_stats,
)
from torch.utils.data import DataLoader

import cicld.data.datasets as datasets_module
from cicld.data import transforms as T
from cicld.data.datasets import DEFAULT_CROP, DEFAULT_RESIZE, SourceDataset, TargetDataset, ValDataset, item_rng
from cicld.data.pngio import write_image
from cicld.data.sampling import RareClassSampler
from cicld.errors import DataError

H, W = 20, 28  # toy frames: (height, width)


def _labels(n=3):
    return {f"{i + 1:05d}": stripes(H, W, offset=i) for i in range(n)}


def _make(tmp_path, dataset, n=3):
    labels = _labels(n)
    if dataset == "gta5":
        return make_gta5(tmp_path / "gta5", labels)
    if dataset == "synthia":
        return make_synthia(tmp_path / "synthia", {f"{i + 1:07d}": lab for i, lab in enumerate(labels.values())})
    return make_cityscapes(
        tmp_path / "cityscapes",
        "train",
        {f"aachen/aachen_000000_{i:06d}": lab for i, lab in enumerate(labels.values())},
    )


def _red_label(item):
    """The trainIds encoded in the item's image (see _fixtures_data.image_for)."""
    return label_from_red(T.to_uint8_image(item["image"])[..., 0])


# --------------------------------------------------------------------------- SourceDataset


@pytest.mark.parametrize("dataset", ["gta5", "synthia", "cityscapes"])
def test_source_item_is_normalised_image_long_label_and_name(tmp_path, dataset):
    root = _make(tmp_path, dataset)
    data = SourceDataset(root, dataset, flip_p=0.0)
    item = data[0]
    assert len(data) == 3
    assert item["image"].shape == (3, H, W) and item["image"].dtype == torch.float32
    assert item["label"].shape == (H, W) and item["label"].dtype == torch.int64
    assert item["name"] == data.samples[0].name
    assert item["image"].min() < 0 < item["image"].max()  # normalised, not [0, 1] or [0, 255]


def test_source_label_is_the_prepared_train_ids_file(tmp_path):
    root = _make(tmp_path, "gta5")
    item = SourceDataset(root, "gta5", flip_p=0.0)[1]
    assert np.array_equal(item["label"].numpy(), _labels()["00002"])
    assert np.array_equal(T.to_uint8_image(item["image"]), image_for(_labels()["00002"]))


def test_source_crop_has_the_crop_size_given_as_width_height(tmp_path):
    item = SourceDataset(_make(tmp_path, "gta5"), "gta5", crop=(16, 8))[0]
    assert item["image"].shape == (3, 8, 16) and item["label"].shape == (8, 16)


def test_source_image_and_label_get_the_same_crop_and_flip(tmp_path):
    data = SourceDataset(_make(tmp_path, "synthia"), "synthia", crop=(13, 9), flip_p=0.5)
    for index in range(3):
        for epoch in range(4):
            data.set_epoch(epoch)
            item = data[index]
            assert np.array_equal(_red_label(item), item["label"].numpy())


def test_source_flip_mirrors_image_and_label(tmp_path):
    root = _make(tmp_path, "gta5")
    plain = SourceDataset(root, "gta5", flip_p=0.0)[0]
    flipped = SourceDataset(root, "gta5", flip_p=1.0)[0]
    assert torch.equal(flipped["label"], plain["label"].flip(-1))
    assert torch.equal(flipped["image"], plain["image"].flip(-1))


def test_source_resize_gives_the_requested_size_and_keeps_the_label_set(tmp_path):
    item = SourceDataset(_make(tmp_path, "gta5"), "gta5", resize=(40, 15), flip_p=0.0)[0]
    assert item["image"].shape == (3, 15, 40) and item["label"].shape == (15, 40)
    assert set(item["label"].unique().tolist()) <= set(np.unique(_labels()["00001"]).tolist())


def test_source_keep_ratio_treats_resize_as_mmseg_edge_bounds(tmp_path):
    item = SourceDataset(_make(tmp_path, "gta5"), "gta5", resize=(56, 56), keep_ratio=True, flip_p=0.0)[0]
    assert item["image"].shape == (3, 40, 56)  # 28x20 scaled by 2 fits the 56 long edge


def test_source_crop_larger_than_the_image_pads_label_with_ignore_and_image_with_zero(tmp_path):
    item = SourceDataset(_make(tmp_path, "gta5"), "gta5", crop=(32, 24), flip_p=0.0)[0]
    assert item["image"].shape == (3, 24, 32) and item["label"].shape == (24, 32)
    assert (item["label"][H:] == 255).all() and (item["label"][:, W:] == 255).all()
    assert (item["image"][:, H:] == 0).all() and (item["image"][:, :, W:] == 0).all()
    assert torch.equal(item["label"][:H, :W], torch.from_numpy(_labels()["00001"]).long())


def _band_widths(label: np.ndarray) -> list[int]:
    """Lengths of the runs of equal values along each row of ``label``."""
    widths = []
    for row in label:
        edges = np.flatnonzero(np.diff(row)) + 1
        widths += np.diff(np.concatenate([[0], edges, [len(row)]])).tolist()
    return widths


def test_source_zoom_keeps_the_size_and_makes_objects_larger(tmp_path):
    root = _make(tmp_path, "gta5")
    plain = SourceDataset(root, "gta5", flip_p=0.0)
    zoomed = SourceDataset(root, "gta5", flip_p=0.0, zoom_max=2.0)
    for index in range(3):
        item = zoomed[index]
        assert item["image"].shape == (3, H, W) and item["label"].shape == (H, W)
        inner = _band_widths(item["label"].numpy())[1:-1]  # whole 4-column stripes, scaled
        assert 4 <= np.mean(inner) <= 8
    assert np.mean(_band_widths(plain[0]["label"].numpy())[1:-1]) == 4


def test_source_zoom_moves_image_and_label_together(tmp_path):
    data = SourceDataset(_make(tmp_path, "synthia"), "synthia", crop=(13, 9), flip_p=0.5, zoom_max=1.7)
    for index in range(3):
        for epoch in range(3):
            data.set_epoch(epoch)
            item = data[index]
            decoded, label = _red_label(item), item["label"].numpy()
            # Bilinear zoom blends the image's red code on stripe borders only (decoded -1 there).
            valid = decoded >= 0
            assert valid.mean() > 0.5 and (decoded[valid] == label[valid]).mean() > 0.9


def test_source_zoom_below_one_is_refused(tmp_path):
    with pytest.raises(ValueError, match="zoom_max"):
        SourceDataset(_make(tmp_path, "gta5"), "gta5", zoom_max=0.5)


def test_source_crops_avoid_a_dominant_class(tmp_path):
    label = np.zeros((H, W), np.uint8)
    label[:, 21:] = np.arange(7, dtype=np.uint8) % 3 + 1  # a quarter of the columns are not road
    root = make_gta5(tmp_path / "gta5", {"00001": label})
    data = SourceDataset(root, "gta5", crop=(7, 7), flip_p=0.0, cat_max_ratio=0.75)
    shares = []
    for epoch in range(30):
        data.set_epoch(epoch)
        counts = np.bincount(data[0]["label"].numpy().ravel())
        shares.append(counts.max() / counts.sum())
    assert np.mean(np.array(shares) < 0.75) > 0.9


def test_source_items_are_a_function_of_seed_epoch_and_index(tmp_path):
    root = _make(tmp_path, "gta5")
    a = SourceDataset(root, "gta5", crop=(9, 9), seed=3)
    b = SourceDataset(root, "gta5", crop=(9, 9), seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert all(
        torch.equal(a[i]["image"], b[i]["image"]) and torch.equal(a[i]["label"], b[i]["label"]) for i in range(3)
    )


def test_source_augmentation_differs_across_epochs_and_seeds(tmp_path):
    root = _make(tmp_path, "gta5")
    data = SourceDataset(root, "gta5", crop=(9, 9), seed=3)
    first = [data[i]["image"] for i in range(3)]
    data.set_epoch(1)
    assert any(not torch.equal(first[i], data[i]["image"]) for i in range(3))
    other_seed = SourceDataset(root, "gta5", crop=(9, 9), seed=4)
    assert any(not torch.equal(first[i], other_seed[i]["image"]) for i in range(3))


def test_item_rng_streams_differ_per_index_and_repeat_per_triple():
    assert item_rng(0, 0, 1).random() == item_rng(0, 0, 1).random()
    assert len({item_rng(0, e, i).random() for e in range(3) for i in range(3)}) == 9


def test_dataloader_workers_yield_the_same_items_as_direct_indexing(tmp_path):
    data = SourceDataset(_make(tmp_path, "gta5"), "gta5", crop=(9, 9), seed=1)
    data.set_epoch(5)
    loaded = list(DataLoader(data, batch_size=1, num_workers=2, shuffle=False))
    for index, batch in enumerate(loaded):
        assert torch.equal(batch["image"][0], data[index]["image"])
        assert torch.equal(batch["label"][0], data[index]["label"])


def test_label_a_few_pixels_off_the_image_size_is_resized_onto_the_image(tmp_path):
    root = _make(tmp_path, "gta5", n=1)
    write_image(root / "labels" / "00001_labelTrainIds.png", stripes(H + 2, W - 1))
    item = SourceDataset(root, "gta5", flip_p=0.0)[0]
    assert item["label"].shape == (H, W)


def test_missing_train_ids_is_a_data_error_with_the_prepare_data_hint(tmp_path):
    root = _make(tmp_path, "gta5")
    (root / "labels" / "00002_labelTrainIds.png").unlink()
    with pytest.raises(DataError, match=r"1 of 3 gta5 labels .*00002_labelTrainIds.png.*run `cicld prepare-data gta5 "):
        SourceDataset(root, "gta5")


def test_train_ids_deleted_after_listing_is_a_data_error_with_the_hint(tmp_path):
    root = _make(tmp_path, "cityscapes")
    data = SourceDataset(root, "cityscapes")
    data.samples[0].train_ids.unlink()
    with pytest.raises(DataError, match=r"does not exist; run `cicld prepare-data cityscapes "):
        data[0]


def test_corrupt_image_is_a_data_error_naming_the_file(tmp_path):
    root = _make(tmp_path, "gta5")
    broken = root / "images" / "00002.png"
    broken.write_bytes(broken.read_bytes()[:60])
    with pytest.raises(DataError, match="00002.png"):
        SourceDataset(root, "gta5")[1]


def test_a_data_error_in_a_dataloader_worker_keeps_its_own_short_message(tmp_path):
    root = _make(tmp_path, "gta5")
    broken = root / "images" / "00002.png"
    broken.write_bytes(broken.read_bytes()[:60])
    data = SourceDataset(root, "gta5")
    with pytest.raises(DataError) as in_process:
        data[1]
    with pytest.raises(DataError) as in_worker:
        list(DataLoader(data, batch_size=1, num_workers=1, shuffle=False))
    assert (
        str(in_worker.value) == str(in_process.value) == f"{broken} is corrupt or truncated (image file is truncated)"
    )


def test_source_without_any_label_is_a_data_error(tmp_path):
    root = make_cityscapes(tmp_path / "cs", "train", {"aachen/aachen_000000_000000": stripes(H, W)}, with_labels=False)
    with pytest.raises(DataError, match="no labelled cityscapes frames"):
        SourceDataset(root, "cityscapes")


def test_unknown_dataset_name_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="unknown dataset"):
        SourceDataset(_make(tmp_path, "gta5"), "kitti")


# --------------------------------------------------------------------------- rare-class sampling


def _rare_class_root(tmp_path):
    """Five road/sidewalk frames; bicycle (18) only in frame 00004, in its top-left corner."""
    labels = {f"{i:05d}": stripes(H, W, classes=(0, 1)) for i in range(1, 6)}
    labels["00004"][:10, :10] = 18
    root = make_gta5(tmp_path / "gta5", labels)
    write_class_stats(root, "gta5")
    return root


def test_rcs_draws_the_frames_holding_the_rare_class_most_often(tmp_path):
    root = _rare_class_root(tmp_path)
    sampler = RareClassSampler(root, temperature=0.01, min_pixels=10)
    data = SourceDataset(root, "gta5", rare_class_sampling=sampler, flip_p=0.0)
    names = []
    for epoch in range(2):
        data.set_epoch(epoch)
        names += [data[i]["name"] for i in range(len(data))]
    assert names.count("00004") >= 8  # of 10; uniform sampling would give about 2


def test_rcs_recrops_until_the_crop_holds_enough_of_the_drawn_class(tmp_path):
    root = _rare_class_root(tmp_path)

    def crops_with_bicycle(min_crop_ratio):
        sampler = RareClassSampler(root, temperature=0.01, min_pixels=40, min_crop_ratio=min_crop_ratio)
        data = SourceDataset(root, "gta5", rare_class_sampling=sampler, crop=(8, 8), cat_max_ratio=1.0)
        hits = 0
        for epoch in range(6):
            data.set_epoch(epoch)
            hits += sum(int((data[i]["label"] == 18).sum()) > 20 for i in range(len(data)))
        return hits

    # One uniform 8x8 crop of frame 00004 holds > 20 bicycle pixels with p = 0.2; 11 tries: 0.91.
    assert crops_with_bicycle(0.5) >= 22
    assert crops_with_bicycle(0.0) <= 12


def test_rcs_items_are_deterministic_and_differ_across_indices(tmp_path):
    root = _rare_class_root(tmp_path)
    sampler = RareClassSampler(root, temperature=1.0, min_pixels=10)
    a = SourceDataset(root, "gta5", rare_class_sampling=sampler, crop=(8, 8), seed=2)
    b = SourceDataset(root, "gta5", rare_class_sampling=sampler, crop=(8, 8), seed=2)
    assert all(torch.equal(a[i]["image"], b[i]["image"]) for i in range(5))
    assert len({a[i]["image"].sum().item() for i in range(5)}) > 1


def test_rcs_stats_naming_unknown_frames_are_a_data_error(tmp_path):
    root = _rare_class_root(tmp_path)
    sampler = RareClassSampler(root, min_pixels=10)
    (root / "images" / "00004.png").unlink()
    with pytest.raises(DataError, match="00004_labelTrainIds.png, which is not a prepared frame"):
        SourceDataset(root, "gta5", rare_class_sampling=sampler)


def test_rcs_accepts_daformer_stats_whose_paths_carry_another_prefix(tmp_path):
    root = _rare_class_root(tmp_path)
    stats = root / "sample_class_stats.json"
    stats.write_text(stats.read_text().replace('"labels/', '"data/gta/labels/'))
    data = SourceDataset(root, "gta5", rare_class_sampling=RareClassSampler(root, min_pixels=10))
    assert data[0]["name"] in {f"{i:05d}" for i in range(1, 6)}


# --------------------------------------------------------------------------- TargetDataset


def _target_root(tmp_path, split="train"):
    frames = {f"bochum/bochum_000000_{i:06d}": stripes(H, W, offset=i) for i in range(3)}
    return make_cityscapes(tmp_path / "cityscapes", split, frames)


def test_target_item_has_a_normalised_image_and_a_name_but_no_label(tmp_path):
    item = TargetDataset(_target_root(tmp_path), crop=(16, 8))[0]
    assert set(item) == {"image", "name"}
    assert item["image"].shape == (3, 8, 16) and item["image"].dtype == torch.float32
    assert item["name"] == "train/bochum/bochum_000000_000000"


def test_target_never_opens_a_label_file(tmp_path, monkeypatch):
    root = _target_root(tmp_path)
    for label_file in (root / "gtFine").rglob("*.png"):
        label_file.write_bytes(b"not a png")
    opened = []
    real_read = datasets_module.read_image
    monkeypatch.setattr(
        datasets_module, "read_image", lambda path, *a, **k: opened.append(path) or real_read(path, *a, **k)
    )
    data = TargetDataset(root, resize=(14, 10), crop=(8, 8))
    for i in range(len(data)):
        data[i]
    assert len(opened) == 3 and all("leftImg8bit" in str(p) for p in opened)


def test_target_works_without_any_gtfine_folder(tmp_path):
    root = make_cityscapes(tmp_path / "cs", "train", {"aachen/aachen_000000_000000": stripes(H, W)}, with_labels=False)
    assert TargetDataset(root)[0]["image"].shape == (3, H, W)


def test_target_resize_crop_and_pad(tmp_path):
    root = _target_root(tmp_path)
    assert TargetDataset(root, resize=(14, 10))[0]["image"].shape == (3, 10, 14)
    padded = TargetDataset(root, crop=(32, 24), flip_p=0.0)[0]["image"]
    assert padded.shape == (3, 24, 32) and (padded[:, H:] == 0).all() and (padded[:, :, W:] == 0).all()


def test_target_items_are_deterministic_per_seed_and_epoch(tmp_path):
    root = _target_root(tmp_path)
    a, b = TargetDataset(root, crop=(9, 9), seed=7), TargetDataset(root, crop=(9, 9), seed=7)
    assert all(torch.equal(a[i]["image"], b[i]["image"]) for i in range(3))
    a.set_epoch(1)
    assert any(not torch.equal(a[i]["image"], b[i]["image"]) for i in range(3))


# --------------------------------------------------------------------------- ValDataset


def test_val_image_is_resized_but_label_keeps_its_full_resolution(tmp_path):
    root = _target_root(tmp_path, split="val")
    item = ValDataset(root, "cityscapes", "val", resize=(14, 10))[0]
    assert item["image"].shape == (3, 10, 14)
    assert item["label"].shape == (H, W) and item["label"].dtype == torch.int64
    assert torch.equal(item["label"], torch.from_numpy(stripes(H, W, offset=0)).long())


def test_val_is_not_augmented(tmp_path):
    root = _target_root(tmp_path, split="val")
    data = ValDataset(root)
    assert torch.equal(data[1]["image"], data[1]["image"])
    assert np.array_equal(T.to_uint8_image(data[1]["image"]), image_for(stripes(H, W, offset=1)))


def test_val_on_gta5_uses_every_frame_or_the_named_subset(tmp_path):
    root = _make(tmp_path, "gta5")
    assert [s.name for s in ValDataset(root, "gta5").samples] == ["00001", "00002", "00003"]
    assert [s.name for s in ValDataset(root, "gta5", names=["00003", "00001"]).samples] == ["00003", "00001"]


def test_val_unknown_name_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="'00009'"):
        ValDataset(_make(tmp_path, "gta5"), "gta5", names=["00009"])


def test_val_without_prepared_labels_is_a_data_error_with_the_hint(tmp_path):
    root = _target_root(tmp_path, split="val")
    for path in (root / "gtFine").rglob("*_labelTrainIds.png"):
        path.unlink()
    with pytest.raises(DataError, match=r"run `cicld prepare-data cityscapes "):
        ValDataset(root)


def test_default_sizes_are_the_daformer_recipe_and_a_users_own_frames_get_the_targets():
    daformer = {"gta5": (1280, 720), "synthia": (1280, 760), "cityscapes": (1024, 512)}
    assert DEFAULT_RESIZE == {**daformer, "pairs": (1024, 512), "images": (1024, 512)}
    assert DEFAULT_CROP == (512, 512)
