"""Specification of cicld.data.transforms: normalisation and geometry, as DAFormer/HRDA/MIC use
them (the UDA augmentations are in test_uda.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cicld.data import transforms as T
from cicld.data.labels import IGNORE_INDEX


def _rgb(h=6, w=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _label(h=12, w=16, classes=(0, 1, 2, 5, 13, 255), seed=0):
    return np.random.default_rng(seed).choice(np.asarray(classes, dtype=np.uint8), size=(h, w))


class _CountingRng:
    """Duck-typed numpy Generator that counts ``integers`` calls (two per crop box drawn)."""

    def __init__(self, seed=0):
        self.rng, self.calls = np.random.default_rng(seed), 0

    def integers(self, *args, **kwargs):
        self.calls += 1
        return self.rng.integers(*args, **kwargs)


# --------------------------------------------------------------------------- normalisation


def test_normalize_gives_float32_chw_with_imagenet_mean_and_std():
    image = _rgb()
    out = T.normalize(image)
    assert out.shape == (3, 6, 8) and out.dtype == torch.float32
    expected = (image[2, 3, 1] / 255.0 - T.IMAGENET_MEAN[1]) / T.IMAGENET_STD[1]
    assert out[1, 2, 3].item() == pytest.approx(expected, abs=1e-6)


def test_denormalize_inverts_normalize_back_to_the_uint8_image():
    image = _rgb(seed=3)
    assert np.array_equal(T.to_uint8_image(T.normalize(image)), image)
    assert torch.allclose(
        T.denormalize(T.normalize(image)), torch.from_numpy(image).permute(2, 0, 1) / 255.0, atol=1e-6
    )


def test_renormalize_inverts_denormalize_on_batches():
    batch = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(T.renormalize(T.denormalize(batch)), batch, atol=1e-5)


def test_normalize_rejects_images_that_are_not_uint8_rgb():
    with pytest.raises(ValueError, match="uint8"):
        T.normalize(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        T.normalize(np.zeros((4, 4), np.uint8))


# --------------------------------------------------------------------------- resize


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
def test_resize_image_takes_width_then_height(method):
    out = T.resize_image(_rgb(6, 8), (20, 10), method)
    assert out.shape == (10, 20, 3) and out.dtype == np.uint8


def test_resize_image_rejects_unknown_method():
    with pytest.raises(ValueError, match="bilinear or bicubic"):
        T.resize_image(_rgb(), (4, 4), "area")


def test_resize_label_by_integer_factor_repeats_each_pixel():
    label = _label(3, 4)
    assert np.array_equal(T.resize_label(label, (12, 9)), np.kron(label, np.ones((3, 3), np.uint8)))


@pytest.mark.parametrize("size", [(7, 5), (33, 29), (16, 3)])
def test_resize_label_never_invents_ids_and_keeps_dtype(size):
    label = _label(12, 16)
    out = T.resize_label(label, size)
    assert out.shape == (size[1], size[0]) and out.dtype == label.dtype
    assert set(np.unique(out)) <= set(np.unique(label))


def test_resize_label_upscaling_keeps_the_whole_label_set():
    label = _label(12, 16)
    assert set(np.unique(T.resize_label(label, (40, 37)))) == set(np.unique(label))


def test_fit_size_reproduces_mmseg_keep_ratio_scales():
    assert T.fit_size((1914, 1052), (1280, 720)) == (1280, 704)
    assert T.fit_size((2048, 1024), (1024, 512)) == (1024, 512)
    assert T.fit_size((1280, 760), (1280, 760)) == (1280, 760)


# --------------------------------------------------------------------------- crop, pad, flip


def test_uniform_crop_box_lies_inside_the_image_and_has_the_crop_size_both_as_width_and_height():
    rng = np.random.default_rng(0)
    for _ in range(50):
        box = T.uniform_crop_box((40, 30), (16, 8), rng)  # a 40-wide, 30-tall image
        assert 0 <= box.top and box.bottom <= 30 and 0 <= box.left and box.right <= 40
        assert (box.right - box.left, box.bottom - box.top) == (16, 8)


def test_crop_box_of_an_image_smaller_than_the_crop_takes_the_whole_short_side():
    box = T.uniform_crop_box((40, 5), (16, 8), np.random.default_rng(0))
    assert (box.top, box.bottom) == (0, 5) and box.right - box.left == 16


def test_crop_box_apply_cuts_rows_then_columns():
    array = np.arange(20).reshape(4, 5)
    assert np.array_equal(T.CropBox(1, 3, 2, 4).apply(array), [[7, 8], [12, 13]])


def test_random_crop_box_prefers_crops_without_a_dominant_class():
    # 3/4 of the columns are road: many uniform crops are road only.
    label = np.zeros((8, 64), np.uint8)
    label[:, 48:] = np.arange(16, dtype=np.uint8) % 3 + 1

    def balanced_share(ratio):
        ok = 0
        for seed in range(100):
            crop = T.random_crop_box(label, (16, 8), np.random.default_rng(seed), cat_max_ratio=ratio).apply(label)
            counts = np.bincount(crop.ravel())
            ok += (counts > 0).sum() > 1 and counts.max() / counts.sum() < 0.75
        return ok / 100

    assert balanced_share(0.75) > 0.9
    assert balanced_share(1.0) < 0.4


def test_random_crop_box_accepts_the_first_box_when_no_class_dominates():
    rng = _CountingRng()
    T.random_crop_box(np.tile(np.arange(4, dtype=np.uint8), (8, 4)), (8, 8), rng)
    assert rng.calls == 2


def test_random_crop_box_checks_at_most_max_tries_boxes_then_returns_a_fresh_one():
    rng = _CountingRng()
    box = T.random_crop_box(np.zeros((8, 32), np.uint8), (8, 8), rng, max_tries=10)
    assert rng.calls == 2 * 11  # the first box, 10 rejections each followed by a new draw
    assert box.bottom - box.top == 8 and box.right - box.left == 8


def test_random_crop_box_ratio_counts_labelled_pixels_only():
    # 70 % road, 20 % sidewalk, 10 % ignore: road is 78 % of the labelled pixels -> rejected.
    label = np.zeros((10, 10), np.uint8)
    label[7:9] = 1
    label[9] = IGNORE_INDEX
    rejected = _CountingRng()
    T.random_crop_box(label, (10, 10), rejected, max_tries=3)
    assert rejected.calls == 2 * 4
    label[9] = 2  # the same layout fully labelled: road is 70 % -> accepted
    accepted = _CountingRng()
    T.random_crop_box(label, (10, 10), accepted, max_tries=3)
    assert accepted.calls == 2


def test_random_crop_box_rejects_a_crop_with_a_single_class():
    label = np.full((8, 8), 3, np.uint8)
    label[0, 0] = IGNORE_INDEX
    rng = _CountingRng()
    T.random_crop_box(label, (8, 8), rng, max_tries=2)
    assert rng.calls == 2 * 3


def test_random_crop_box_ratio_of_one_disables_the_rule():
    rng = _CountingRng()
    T.random_crop_box(np.zeros((8, 32), np.uint8), (8, 8), rng, cat_max_ratio=1.0)
    assert rng.calls == 2


def test_pad_to_fills_bottom_and_right_with_the_value():
    out = T.pad_to(np.ones((2, 3), np.uint8), (5, 4), IGNORE_INDEX)
    assert out.shape == (4, 5)
    assert (out[:2, :3] == 1).all() and (out[2:] == 255).all() and (out[:, 3:] == 255).all()


def test_pad_to_leaves_large_enough_arrays_alone():
    array = np.ones((4, 6, 3))
    assert T.pad_to(array, (5, 4), 0) is array


def test_hflip_mirrors_columns_of_images_and_labels():
    image, label = _rgb(3, 5), _label(3, 5)
    assert np.array_equal(T.hflip(image)[:, 0], image[:, -1])
    assert np.array_equal(T.hflip(label), label[:, ::-1])
    assert np.array_equal(T.hflip(T.hflip(image)), image)
