"""Specification of cicld.training.uda: the UDA augmentations of ``adapt`` (ClassMix, colour
jitter and blur of the mixed images, pseudo-label weights), as DAFormer/HRDA/MIC use them."""

from __future__ import annotations

import colorsys
import types

import numpy as np
import pytest
import torch

from cicld.data import transforms as T
from cicld.data.labels import IGNORE_INDEX
from cicld.training import uda


def _label(h=12, w=16, classes=(0, 1, 2, 5, 13, 255), seed=0):
    return np.random.default_rng(seed).choice(np.asarray(classes, dtype=np.uint8), size=(h, w))


# --------------------------------------------------------------------------- ClassMix


@pytest.mark.parametrize("n_classes", [1, 2, 3, 4, 5, 7])
def test_classmix_chooses_ceil_half_of_the_present_classes(n_classes):
    label = _label(10, 10, classes=tuple(range(n_classes)) + (IGNORE_INDEX,), seed=n_classes)
    present = set(np.unique(label)) - {IGNORE_INDEX}
    for seed in range(5):
        chosen = uda.classmix_classes(label, np.random.default_rng(seed))
        assert len(chosen) == (len(present) + 1) // 2
        assert set(chosen) <= present


def test_classmix_never_chooses_the_ignore_index():
    label = np.full((6, 6), IGNORE_INDEX, np.uint8)
    label[0, 0] = 4
    for seed in range(10):
        assert list(uda.classmix_classes(label, torch.Generator().manual_seed(seed))) == [4]


def test_classmix_mask_of_an_all_ignore_label_is_empty():
    label = torch.full((4, 4), IGNORE_INDEX, dtype=torch.long)
    assert not uda.classmix_mask(label, torch.Generator().manual_seed(0)).any()


@pytest.mark.parametrize("as_torch", [False, True])
def test_classmix_mask_is_exactly_the_pixels_of_the_chosen_classes(as_torch):
    label = _label(16, 16)
    source = torch.from_numpy(label).long() if as_torch else label
    rng = torch.Generator().manual_seed(7) if as_torch else np.random.default_rng(7)
    mask = uda.classmix_mask(source, rng)
    chosen = uda.classmix_classes(source, torch.Generator().manual_seed(7) if as_torch else np.random.default_rng(7))
    mask = mask.numpy() if as_torch else mask
    assert mask.dtype == bool and mask.shape == label.shape
    assert np.array_equal(mask, np.isin(label, chosen))
    for cls in np.unique(label):  # every class wholly in or wholly out
        assert mask[label == cls].all() or not mask[label == cls].any()


def test_classmix_is_deterministic_for_a_seed_and_varies_across_seeds():
    label = torch.from_numpy(_label(16, 16, classes=tuple(range(8)))).long()
    draws = [uda.classmix_mask(label, torch.Generator().manual_seed(s)) for s in (1, 1, 2, 3, 4)]
    assert torch.equal(draws[0], draws[1])
    assert any(not torch.equal(draws[0], d) for d in draws[2:])


def test_class_mix_label_is_source_where_mask_else_target():
    source = torch.from_numpy(_label(8, 8, seed=1)).long()
    target = torch.from_numpy(_label(8, 8, seed=2)).long()
    mask = uda.classmix_mask(source, torch.Generator().manual_seed(0))
    mixed = uda.class_mix(mask, source, target)
    assert mixed.dtype == torch.long
    assert torch.equal(mixed[mask], source[mask]) and torch.equal(mixed[~mask], target[~mask])


def test_class_mix_pastes_every_channel_of_an_image():
    source, target = torch.rand(3, 5, 6), torch.rand(3, 5, 6)
    mask = torch.rand(5, 6) > 0.5
    mixed = uda.class_mix(mask, source, target)
    assert torch.equal(mixed, torch.where(mask.expand(3, 5, 6), source, target))


def test_class_mix_mixes_pixel_weights_like_labels():
    mask = np.eye(4, dtype=bool)
    mixed = uda.class_mix(mask, np.ones((4, 4), np.float32), np.full((4, 4), 0.25, np.float32))
    assert mixed.dtype == np.float32
    assert (mixed[mask] == 1.0).all() and (mixed[~mask] == 0.25).all()


def test_mix_weighs_pasted_pixels_by_their_source_class_and_target_pixels_by_the_pseudo_label_weight():
    source_label = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 255]]])
    batch = {"image": torch.zeros(1, 3, 2, 4), "label": source_label}
    target = {"image": torch.ones(1, 3, 2, 4)}
    pseudo, weight = torch.full((1, 2, 4), 5), torch.full((1, 2, 4), 0.25)
    config = types.SimpleNamespace(mix_jitter_p=0.0, mix_blur_p=0.0)
    class_weight = torch.tensor([0.5, 2.0, 4.0])
    for weights in (None, class_weight):
        _, labels, mixed = uda.mix(batch, target, pseudo, weight, config, torch.Generator().manual_seed(0), weights)
        pasted = labels != 5
        expected = torch.ones_like(mixed) if weights is None else class_weight[source_label.clamp(0, 2)]
        assert pasted.any() and (~pasted).any()
        assert torch.equal(mixed[pasted], expected[pasted])
        assert (mixed[~pasted] == 0.25).all()


def test_classmix_batched_draws_one_mask_per_image_and_mixes_batches():
    labels = torch.stack([torch.from_numpy(_label(8, 8, seed=s)).long() for s in range(3)])
    masks = uda.classmix_masks(labels, torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)
    assert torch.equal(masks, torch.stack([uda.classmix_mask(lab, generator) for lab in labels]))
    images_s, images_t = torch.rand(3, 3, 8, 8), torch.rand(3, 3, 8, 8)
    mixed = uda.class_mix(masks, images_s, images_t)
    for i in range(3):
        assert torch.equal(mixed[i], uda.class_mix(masks[i], images_s[i], images_t[i]))


def test_class_mix_rejects_data_the_mask_does_not_fit():
    with pytest.raises(ValueError, match="does not fit"):
        uda.class_mix(torch.zeros(4, 4, dtype=torch.bool), torch.zeros(3, 5, 4), torch.zeros(3, 5, 4))
    with pytest.raises(ValueError, match="differ in shape"):
        uda.class_mix(torch.zeros(4, 4, dtype=torch.bool), torch.zeros(4, 4), torch.zeros(3, 4, 4))


# --------------------------------------------------------------------------- photometric


def _images(b=4, h=12, w=10, seed=0):
    rgb01 = torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))
    return T.renormalize(rgb01)


def test_color_jitter_keeps_shape_dtype_and_the_unit_range():
    images = _images()
    out = uda.color_jitter(images, torch.Generator().manual_seed(0), p=1.0, strength=0.5)
    assert out.shape == images.shape and out.dtype == images.dtype
    rgb = T.denormalize(out)
    assert rgb.min() >= -1e-5 and rgb.max() <= 1 + 1e-5


def test_color_jitter_with_p_zero_is_the_identity():
    images = _images()
    assert torch.equal(uda.color_jitter(images, torch.Generator().manual_seed(0), p=0.0), images)


def test_color_jitter_with_p_one_changes_every_image_and_leaves_the_input_alone():
    images = _images()
    before = images.clone()
    out = uda.color_jitter(images, torch.Generator().manual_seed(0), p=1.0)
    assert torch.equal(images, before)
    assert all((out[i] - images[i]).abs().max() > 1e-3 for i in range(len(images)))


def test_color_jitter_applies_to_about_p_of_the_images():
    images = _images(b=200, h=2, w=2)
    out = uda.color_jitter(images, torch.Generator().manual_seed(0), p=0.8)
    changed = sum(not torch.equal(out[i], images[i]) for i in range(200))
    assert 140 <= changed <= 180


def test_color_jitter_is_deterministic_for_a_seed():
    images = _images()
    a = uda.color_jitter(images, torch.Generator().manual_seed(3))
    b = uda.color_jitter(images, torch.Generator().manual_seed(3))
    c = uda.color_jitter(images, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_color_jitter_hue_rotation_keeps_grey_pixels_grey():
    grey = T.renormalize(torch.full((1, 3, 4, 4), 0.5))
    # with strength 0.5 every factor varies; grey stays grey (r = g = b) whatever is applied
    out = T.denormalize(uda.color_jitter(grey, torch.Generator().manual_seed(1), p=1.0, strength=0.5))
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-5) and torch.allclose(out[:, 1], out[:, 2], atol=1e-5)


def test_adjust_hue_rotates_hue_like_colorsys():
    rgb = torch.rand(3, 5, 6, generator=torch.Generator().manual_seed(0))
    out = uda.adjust_hue(rgb, 0.3)
    for i, j in [(0, 0), (2, 3), (4, 5)]:
        h, s, v = colorsys.rgb_to_hsv(*rgb[:, i, j].tolist())
        assert out[:, i, j].tolist() == pytest.approx(colorsys.hsv_to_rgb((h + 0.3) % 1.0, s, v), abs=1e-5)
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    assert uda.adjust_hue(red, 1 / 3).flatten().tolist() == pytest.approx([0.0, 1.0, 0.0], abs=1e-6)


def test_gaussian_blur_with_p_zero_is_the_identity():
    images = _images()
    assert torch.equal(uda.gaussian_blur(images, torch.Generator().manual_seed(0), p=0.0), images)


def test_gaussian_blur_keeps_shape_and_stays_within_the_input_range():
    images = _images()
    out = uda.gaussian_blur(images, torch.Generator().manual_seed(0), p=1.0)
    assert out.shape == images.shape
    for i in range(len(images)):
        assert out[i].min() >= images[i].min() - 1e-5 and out[i].max() <= images[i].max() + 1e-5


def test_gaussian_blur_smooths_noise_and_keeps_constant_images_constant():
    noise = _images(b=2, h=32, w=32)
    blurred = uda.gaussian_blur(noise, torch.Generator().manual_seed(0), p=1.0, sigma=(1.0, 1.0))
    assert (blurred.var(dim=(2, 3)) < 0.5 * noise.var(dim=(2, 3))).all()
    flat = torch.full((1, 3, 9, 9), 0.3)
    assert torch.allclose(uda.gaussian_blur(flat, torch.Generator().manual_seed(0), p=1.0), flat, atol=1e-6)


def test_gaussian_blur_is_deterministic_for_a_seed():
    images = _images()
    a = uda.gaussian_blur(images, torch.Generator().manual_seed(2))
    assert torch.equal(a, uda.gaussian_blur(images, torch.Generator().manual_seed(2)))


def test_gaussian_blur_works_on_images_smaller_than_its_kernel():
    tiny = _images(b=1, h=2, w=3)
    out = uda.gaussian_blur(tiny, torch.Generator().manual_seed(0), p=1.0, sigma=(1.15, 1.15))
    assert out.shape == tiny.shape and torch.isfinite(out).all()


def test_gaussian_kernel_size_is_odd_and_covers_three_sigma():
    assert uda.gaussian_kernel_size(0.15) == 3
    assert uda.gaussian_kernel_size(1.0) == 7
    assert uda.gaussian_kernel_size(1.15) == 9


# --------------------------------------------------------------------------- pseudo-labels


def _two_class_probs(confident_mask: torch.Tensor) -> torch.Tensor:
    """Class 1 with p = 0.99 where confident, class 0 with p = 0.6 elsewhere."""
    p1 = torch.where(confident_mask, torch.tensor(0.99), torch.tensor(0.4))
    return torch.stack([1 - p1, p1], dim=1)


def test_pseudo_label_weight_is_the_confident_fraction_per_image_with_rows_zeroed():
    confident = torch.zeros(2, 4, 5, dtype=torch.bool)
    confident[0, :2] = True  # image 0: 10 of 20 pixels confident
    confident[1] = True  # image 1: all
    labels, weight = uda.pseudo_label_weight(
        _two_class_probs(confident), threshold=0.968, ignore_top=1, ignore_bottom=1
    )
    assert labels.dtype == torch.long and torch.equal(labels, confident.long())
    assert weight.shape == (2, 4, 5) and weight.dtype == torch.float32
    assert (weight[:, 0] == 0).all() and (weight[:, 3] == 0).all()
    assert torch.allclose(weight[0, 1:3], torch.full((2, 5), 0.5))
    assert torch.allclose(weight[1, 1:3], torch.ones(2, 5))


def test_pseudo_label_threshold_is_inclusive():
    probs = torch.tensor([0.75, 0.25]).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    _, weight = uda.pseudo_label_weight(probs, threshold=0.75, ignore_top=0, ignore_bottom=0)
    assert (weight == 1.0).all()


def test_pseudo_label_weight_without_row_masks_keeps_every_row():
    probs = _two_class_probs(torch.ones(1, 6, 3, dtype=torch.bool))
    _, weight = uda.pseudo_label_weight(probs, ignore_top=0, ignore_bottom=0)
    assert (weight == 1.0).all()


def test_pseudo_label_weight_default_rows_match_daformer_on_a_512_crop():
    probs = _two_class_probs(torch.ones(1, 512, 4, dtype=torch.bool))
    _, weight = uda.pseudo_label_weight(probs)
    zero_rows = (weight[0] == 0).all(dim=1)
    assert zero_rows[:15].all() and zero_rows[-120:].all() and not zero_rows[15:-120].any()


def test_pseudo_label_weight_accepts_a_single_unbatched_image():
    labels, weight = uda.pseudo_label_weight(
        _two_class_probs(torch.ones(1, 3, 3, dtype=torch.bool))[0], ignore_top=0, ignore_bottom=0
    )
    assert labels.shape == (3, 3) and weight.shape == (3, 3)


class _Teacher(torch.nn.Module):
    """An EMA model stand-in: fixed logits, and a record of how it was asked."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits
        self.calls: list[tuple[bool, torch.Generator | None]] = []

    def predict(self, images, generator=None):
        self.calls.append((self.training, generator))
        return self.logits.expand(len(images), -1, -1, -1)


def test_pseudo_labels_come_from_the_ema_models_inference_path_in_eval_mode_with_the_steps_noise():
    logits = torch.zeros(1, 3, 4, 4)
    logits[0, 2, :2] = 10.0  # class 2, confident, on the top half
    logits[0, 1, 2:] = 0.5  # class 1, unsure, on the bottom half
    teacher = _Teacher(logits).train()
    config = types.SimpleNamespace(pseudo_threshold=0.968, pseudo_ignore_top=0, pseudo_ignore_bottom=1)
    generator = torch.Generator().manual_seed(3)
    labels, weight = uda.pseudo_label(teacher, torch.zeros(2, 3, 4, 4), config, generator)
    assert teacher.calls == [(False, generator)]  # eval mode, the step's own noise
    assert labels.shape == (2, 4, 4) and (labels[:, :2] == 2).all() and (labels[:, 2:] == 1).all()
    assert torch.allclose(weight[:, :3], torch.full((2, 3, 4), 0.5))  # half the pixels confident
    assert (weight[:, 3] == 0).all()  # the --pseudo-ignore-bottom row


def test_mix_never_reads_the_targets_labels():
    source = {"image": torch.zeros(1, 3, 4, 4), "label": torch.tensor([[[0, 0, 1, 1]] * 4])}
    target = {"image": torch.ones(1, 3, 4, 4), "label": torch.full((1, 4, 4), 7)}  # what the step must not use
    pseudo, weight = torch.full((1, 4, 4), 5), torch.full((1, 4, 4), 0.25)
    config = types.SimpleNamespace(mix_jitter_p=0.0, mix_blur_p=0.0)
    _, labels, weights = uda.mix(source, target, pseudo, weight, config, torch.Generator().manual_seed(0))
    assert 7 not in labels.unique().tolist()
    assert set(labels.unique().tolist()) <= {0, 1, 5}
    assert set(weights.unique().tolist()) <= {1.0, 0.25}  # pasted pixels weigh 1 without class weights


def test_one_adapt_step_pseudo_labels_with_the_ema_model_mixes_and_runs_one_forward_of_the_three_batches():
    from cicld.training.adapt import uda_step

    logits = torch.zeros(1, 6, 4, 4)
    logits[0, 5] = 10.0  # the EMA model says class 5 everywhere, confidently
    teacher = _Teacher(logits)
    source = {"image": torch.zeros(2, 3, 4, 4), "label": torch.tensor([[[0, 0, 1, 1]] * 4] * 2)}
    target = {"image": torch.ones(2, 3, 4, 4)}  # no labels at all: the step must not need them
    config = types.SimpleNamespace(
        pseudo_threshold=0.968, pseudo_ignore_top=0, pseudo_ignore_bottom=0, mix_jitter_p=0.0, mix_blur_p=0.0
    )
    forwards = []

    def objective(*batches):  # the objective's one forward: record what it is given
        forwards.append(batches)
        return {"ce_source": torch.tensor(1.0)}

    losses = uda_step(objective, teacher, source, target, config, torch.Generator().manual_seed(0))
    assert losses == {"ce_source": torch.tensor(1.0)} and len(teacher.calls) == 1 and len(forwards) == 1
    source_images, source_labels, mixed_images, mixed_labels, mixed_weights, target_images = forwards[0]
    assert source_images is source["image"] and source_labels is source["label"] and target_images is target["image"]
    pasted = mixed_labels != 5  # the source classes ClassMix chose; the EMA's pseudo-label everywhere else
    assert pasted.any() and (~pasted).any()
    assert torch.equal(mixed_labels[pasted], source["label"][pasted])
    assert torch.equal(mixed_images, torch.where(pasted[:, None], source["image"], target["image"]))
    assert torch.equal(mixed_weights, torch.ones_like(mixed_weights))  # pasted: 1; the rest all confident
