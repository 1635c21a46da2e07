"""Specification of cicld.data.transforms: normalisation, geometry, ClassMix, photometric
augmentation and pseudo-label weights, as DAFormer/HRDA/MIC use them."""

from __future__ import annotations

import colorsys

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
    assert torch.allclose(T.denormalize(T.normalize(image)), torch.from_numpy(image).permute(2, 0, 1) / 255.0, atol=1e-6)


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


def test_uniform_crop_box_lies_inside_the_image_and_has_the_crop_size():
    rng = np.random.default_rng(0)
    for _ in range(50):
        box = T.uniform_crop_box(30, 40, (16, 8), rng)
        assert 0 <= box.top and box.bottom <= 30 and 0 <= box.left and box.right <= 40
        assert (box.right - box.left, box.bottom - box.top) == (16, 8)


def test_crop_box_of_an_image_smaller_than_the_crop_takes_the_whole_short_side():
    box = T.uniform_crop_box(5, 40, (16, 8), np.random.default_rng(0))
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


# --------------------------------------------------------------------------- ClassMix


@pytest.mark.parametrize("n_classes", [1, 2, 3, 4, 5, 7])
def test_classmix_chooses_ceil_half_of_the_present_classes(n_classes):
    label = _label(10, 10, classes=tuple(range(n_classes)) + (IGNORE_INDEX,), seed=n_classes)
    present = set(np.unique(label)) - {IGNORE_INDEX}
    for seed in range(5):
        chosen = T.classmix_classes(label, np.random.default_rng(seed))
        assert len(chosen) == (len(present) + 1) // 2
        assert set(chosen) <= present


def test_classmix_never_chooses_the_ignore_index():
    label = np.full((6, 6), IGNORE_INDEX, np.uint8)
    label[0, 0] = 4
    for seed in range(10):
        assert list(T.classmix_classes(label, torch.Generator().manual_seed(seed))) == [4]


def test_classmix_mask_of_an_all_ignore_label_is_empty():
    label = torch.full((4, 4), IGNORE_INDEX, dtype=torch.long)
    assert not T.classmix_mask(label, torch.Generator().manual_seed(0)).any()


@pytest.mark.parametrize("as_torch", [False, True])
def test_classmix_mask_is_exactly_the_pixels_of_the_chosen_classes(as_torch):
    label = _label(16, 16)
    source = torch.from_numpy(label).long() if as_torch else label
    rng = torch.Generator().manual_seed(7) if as_torch else np.random.default_rng(7)
    mask = T.classmix_mask(source, rng)
    chosen = T.classmix_classes(source, torch.Generator().manual_seed(7) if as_torch else np.random.default_rng(7))
    mask = mask.numpy() if as_torch else mask
    assert mask.dtype == bool and mask.shape == label.shape
    assert np.array_equal(mask, np.isin(label, chosen))
    for cls in np.unique(label):  # every class wholly in or wholly out
        assert mask[label == cls].all() or not mask[label == cls].any()


def test_classmix_is_deterministic_for_a_seed_and_varies_across_seeds():
    label = torch.from_numpy(_label(16, 16, classes=tuple(range(8)))).long()
    draws = [T.classmix_mask(label, torch.Generator().manual_seed(s)) for s in (1, 1, 2, 3, 4)]
    assert torch.equal(draws[0], draws[1])
    assert any(not torch.equal(draws[0], d) for d in draws[2:])


def test_class_mix_label_is_source_where_mask_else_target():
    source = torch.from_numpy(_label(8, 8, seed=1)).long()
    target = torch.from_numpy(_label(8, 8, seed=2)).long()
    mask = T.classmix_mask(source, torch.Generator().manual_seed(0))
    mixed = T.class_mix(mask, source, target)
    assert mixed.dtype == torch.long
    assert torch.equal(mixed[mask], source[mask]) and torch.equal(mixed[~mask], target[~mask])


def test_class_mix_pastes_every_channel_of_an_image():
    source, target = torch.rand(3, 5, 6), torch.rand(3, 5, 6)
    mask = torch.rand(5, 6) > 0.5
    mixed = T.class_mix(mask, source, target)
    assert torch.equal(mixed, torch.where(mask.expand(3, 5, 6), source, target))


def test_class_mix_mixes_pixel_weights_like_labels():
    mask = np.eye(4, dtype=bool)
    mixed = T.class_mix(mask, np.ones((4, 4), np.float32), np.full((4, 4), 0.25, np.float32))
    assert mixed.dtype == np.float32
    assert (mixed[mask] == 1.0).all() and (mixed[~mask] == 0.25).all()


def test_classmix_batched_draws_one_mask_per_image_and_mixes_batches():
    labels = torch.stack([torch.from_numpy(_label(8, 8, seed=s)).long() for s in range(3)])
    masks = T.classmix_masks(labels, torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)
    assert torch.equal(masks, torch.stack([T.classmix_mask(lab, generator) for lab in labels]))
    images_s, images_t = torch.rand(3, 3, 8, 8), torch.rand(3, 3, 8, 8)
    mixed = T.class_mix(masks, images_s, images_t)
    for i in range(3):
        assert torch.equal(mixed[i], T.class_mix(masks[i], images_s[i], images_t[i]))


def test_class_mix_rejects_data_the_mask_does_not_fit():
    with pytest.raises(ValueError, match="does not fit"):
        T.class_mix(torch.zeros(4, 4, dtype=torch.bool), torch.zeros(3, 5, 4), torch.zeros(3, 5, 4))
    with pytest.raises(ValueError, match="differ in shape"):
        T.class_mix(torch.zeros(4, 4, dtype=torch.bool), torch.zeros(4, 4), torch.zeros(3, 4, 4))


# --------------------------------------------------------------------------- photometric


def _images(b=4, h=12, w=10, seed=0):
    rgb01 = torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))
    return T.renormalize(rgb01)


def test_color_jitter_keeps_shape_dtype_and_the_unit_range():
    images = _images()
    out = T.color_jitter(images, torch.Generator().manual_seed(0), p=1.0, strength=0.5)
    assert out.shape == images.shape and out.dtype == images.dtype
    rgb = T.denormalize(out)
    assert rgb.min() >= -1e-5 and rgb.max() <= 1 + 1e-5


def test_color_jitter_with_p_zero_is_the_identity():
    images = _images()
    assert torch.equal(T.color_jitter(images, torch.Generator().manual_seed(0), p=0.0), images)


def test_color_jitter_with_p_one_changes_every_image_and_leaves_the_input_alone():
    images = _images()
    before = images.clone()
    out = T.color_jitter(images, torch.Generator().manual_seed(0), p=1.0)
    assert torch.equal(images, before)
    assert all((out[i] - images[i]).abs().max() > 1e-3 for i in range(len(images)))


def test_color_jitter_applies_to_about_p_of_the_images():
    images = _images(b=200, h=2, w=2)
    out = T.color_jitter(images, torch.Generator().manual_seed(0), p=0.8)
    changed = sum(not torch.equal(out[i], images[i]) for i in range(200))
    assert 140 <= changed <= 180


def test_color_jitter_is_deterministic_for_a_seed():
    images = _images()
    a = T.color_jitter(images, torch.Generator().manual_seed(3))
    b = T.color_jitter(images, torch.Generator().manual_seed(3))
    c = T.color_jitter(images, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_color_jitter_hue_rotation_keeps_grey_pixels_grey():
    grey = T.renormalize(torch.full((1, 3, 4, 4), 0.5))
    # with strength 0.5 every factor varies; grey stays grey (r = g = b) whatever is applied
    out = T.denormalize(T.color_jitter(grey, torch.Generator().manual_seed(1), p=1.0, strength=0.5))
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-5) and torch.allclose(out[:, 1], out[:, 2], atol=1e-5)


def test_adjust_hue_rotates_hue_like_colorsys():
    rgb = torch.rand(3, 5, 6, generator=torch.Generator().manual_seed(0))
    out = T.adjust_hue(rgb, 0.3)
    for i, j in [(0, 0), (2, 3), (4, 5)]:
        h, s, v = colorsys.rgb_to_hsv(*rgb[:, i, j].tolist())
        assert out[:, i, j].tolist() == pytest.approx(colorsys.hsv_to_rgb((h + 0.3) % 1.0, s, v), abs=1e-5)
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    assert T.adjust_hue(red, 1 / 3).flatten().tolist() == pytest.approx([0.0, 1.0, 0.0], abs=1e-6)


def test_gaussian_blur_with_p_zero_is_the_identity():
    images = _images()
    assert torch.equal(T.gaussian_blur(images, torch.Generator().manual_seed(0), p=0.0), images)


def test_gaussian_blur_keeps_shape_and_stays_within_the_input_range():
    images = _images()
    out = T.gaussian_blur(images, torch.Generator().manual_seed(0), p=1.0)
    assert out.shape == images.shape
    for i in range(len(images)):
        assert out[i].min() >= images[i].min() - 1e-5 and out[i].max() <= images[i].max() + 1e-5


def test_gaussian_blur_smooths_noise_and_keeps_constant_images_constant():
    noise = _images(b=2, h=32, w=32)
    blurred = T.gaussian_blur(noise, torch.Generator().manual_seed(0), p=1.0, sigma=(1.0, 1.0))
    assert (blurred.var(dim=(2, 3)) < 0.5 * noise.var(dim=(2, 3))).all()
    flat = torch.full((1, 3, 9, 9), 0.3)
    assert torch.allclose(T.gaussian_blur(flat, torch.Generator().manual_seed(0), p=1.0), flat, atol=1e-6)


def test_gaussian_blur_is_deterministic_for_a_seed():
    images = _images()
    a = T.gaussian_blur(images, torch.Generator().manual_seed(2))
    assert torch.equal(a, T.gaussian_blur(images, torch.Generator().manual_seed(2)))


def test_gaussian_blur_works_on_images_smaller_than_its_kernel():
    tiny = _images(b=1, h=2, w=3)
    out = T.gaussian_blur(tiny, torch.Generator().manual_seed(0), p=1.0, sigma=(1.15, 1.15))
    assert out.shape == tiny.shape and torch.isfinite(out).all()


def test_gaussian_kernel_size_is_odd_and_covers_three_sigma():
    assert T.gaussian_kernel_size(0.15) == 3
    assert T.gaussian_kernel_size(1.0) == 7
    assert T.gaussian_kernel_size(1.15) == 9


# --------------------------------------------------------------------------- pseudo-labels


def _two_class_probs(confident_mask: torch.Tensor) -> torch.Tensor:
    """Class 1 with p = 0.99 where confident, class 0 with p = 0.6 elsewhere."""
    p1 = torch.where(confident_mask, torch.tensor(0.99), torch.tensor(0.4))
    return torch.stack([1 - p1, p1], dim=1)


def test_pseudo_label_weight_is_the_confident_fraction_per_image_with_rows_zeroed():
    confident = torch.zeros(2, 4, 5, dtype=torch.bool)
    confident[0, :2] = True  # image 0: 10 of 20 pixels confident
    confident[1] = True  # image 1: all
    labels, weight = T.pseudo_label_weight(_two_class_probs(confident), threshold=0.968, ignore_top=1, ignore_bottom=1)
    assert labels.dtype == torch.long and torch.equal(labels, confident.long())
    assert weight.shape == (2, 4, 5) and weight.dtype == torch.float32
    assert (weight[:, 0] == 0).all() and (weight[:, 3] == 0).all()
    assert torch.allclose(weight[0, 1:3], torch.full((2, 5), 0.5))
    assert torch.allclose(weight[1, 1:3], torch.ones(2, 5))


def test_pseudo_label_threshold_is_inclusive():
    probs = torch.tensor([0.75, 0.25]).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    _, weight = T.pseudo_label_weight(probs, threshold=0.75, ignore_top=0, ignore_bottom=0)
    assert (weight == 1.0).all()


def test_pseudo_label_weight_without_row_masks_keeps_every_row():
    probs = _two_class_probs(torch.ones(1, 6, 3, dtype=torch.bool))
    _, weight = T.pseudo_label_weight(probs, ignore_top=0, ignore_bottom=0)
    assert (weight == 1.0).all()


def test_pseudo_label_weight_default_rows_match_daformer_on_a_512_crop():
    probs = _two_class_probs(torch.ones(1, 512, 4, dtype=torch.bool))
    _, weight = T.pseudo_label_weight(probs)
    zero_rows = (weight[0] == 0).all(dim=1)
    assert zero_rows[:15].all() and zero_rows[-120:].all() and not zero_rows[15:-120].any()


def test_pseudo_label_weight_accepts_a_single_unbatched_image():
    labels, weight = T.pseudo_label_weight(_two_class_probs(torch.ones(1, 3, 3, dtype=torch.bool))[0], ignore_top=0, ignore_bottom=0)
    assert labels.shape == (3, 3) and weight.shape == (3, 3)
