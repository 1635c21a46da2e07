"""Specification of the CICLD network (cicld.models): shapes, switches, inference, checkpoints."""

import copy
import json
import re

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file

from cicld.data.labels import NUM_CLASSES
from cicld.errors import CicldError
from cicld.models import CICLD, CONFIG_NAME, WEIGHTS_NAME, CICLDConfig
from cicld.models.conditioning import eq5_condition, one_hot_labels

H, W = 64, 128  # the tiny preset's reference size (latent 8×16)


pytestmark = pytest.mark.usefixtures("single_thread")


def tiny(**overrides) -> CICLD:
    torch.manual_seed(0)
    return CICLD(CICLDConfig.preset("tiny", **overrides)).eval()


def images(batch=1, height=H, width=W, seed=1):
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def labels(batch=1, height=H, width=W, seed=2):
    y = torch.randint(0, NUM_CLASSES, (batch, height, width), generator=torch.Generator().manual_seed(seed))
    y[:, :4] = 255
    return y


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def perturb_fusions(model: CICLD) -> None:
    """Move the zero-initialised inter-coder convs, as training would."""
    with torch.no_grad():
        for p in model.decoder.fusions.parameters():
            p.normal_(0, 0.5, generator=seeded(7))


@pytest.fixture(scope="module")
def model():
    return tiny()


# ---------------------------------------------------------------------- configs and shapes
def test_config_round_trips_through_json():
    config = CICLDConfig.preset("tiny", t_star=0.3, inter_coder=False)
    assert CICLDConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_config_round_trips_its_inference_settings_through_json():
    config = CICLDConfig.preset("tiny", input_size=None, sliding_window=(64, 32), sliding_overlap=(16, 8))
    assert CICLDConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    config = CICLDConfig.preset("tiny", input_size=(256, 128))
    assert CICLDConfig.from_dict(json.loads(json.dumps(config.to_dict()))).input_size == (256, 128)


def test_a_model_folder_without_inference_settings_loads_with_the_documented_defaults(tmp_path):
    tiny().save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    inference = ("input_size", "image_mean", "image_std", "sliding_window", "sliding_overlap")
    (tmp_path / CONFIG_NAME).write_text(json.dumps({k: v for k, v in config.items() if k not in inference}))
    loaded = CICLD.from_pretrained(tmp_path).config
    assert loaded.input_size == (1024, 512) and loaded.inference_steps == 1
    assert (loaded.image_mean, loaded.image_std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert (loaded.sliding_window, loaded.sliding_overlap) == ((512, 512), (128, 128))


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"input_size": (0, 32)}, "input_size must be"),
        ({"image_std": (0.2, 0.0, 0.2)}, "image_std must be positive"),
        ({"image_mean": (0.5, 0.5)}, "image_mean needs 3 finite numbers"),
        ({"sliding_window": (40, 32)}, "sliding_window must be"),
        ({"sliding_overlap": (4, 8)}, "sliding_overlap must be"),
    ],
)
def test_impossible_inference_settings_are_refused(setting, message):
    with pytest.raises(CicldError, match=message):
        CICLDConfig.preset("tiny", **setting)


def test_config_with_unknown_keys_is_rejected():
    with pytest.raises(CicldError, match="unknown model config keys: not_a_field"):
        CICLDConfig.from_dict({**CICLDConfig().to_dict(), "not_a_field": 1})


def test_unknown_preset_is_rejected():
    with pytest.raises(CicldError, match="unknown model preset 'huge'"):
        CICLDConfig.preset("huge")


def test_invalid_config_values_are_rejected():
    with pytest.raises(CicldError, match="discriminator"):
        CICLDConfig(discriminator="4class")
    with pytest.raises(CicldError, match="t_star"):
        CICLDConfig(t_star=0.0)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("latent_channels", "4", "latent_channels must be an integer, got '4'"),
        ("t_star", "0.2", "t_star must be a number, got '0.2'"),
        ("inter_coder", 1, "inter_coder must be true or false, got 1"),
        ("num_classes", 19.0, "num_classes must be an integer, got 19.0"),
        ("ae_block_out_channels", [8, "16", 16, 32], "ae_block_out_channels must be a list of integers"),
        ("ae_block_out_channels", 8, "ae_block_out_channels must be a list of integers, got 8"),
        ("beta_schedule", None, "beta_schedule must be a string, got None"),
    ],
)
def test_a_wrongly_typed_config_value_is_a_one_line_error_naming_the_key(key, value, expected):
    with pytest.raises(CicldError, match=re.escape(expected)):
        CICLDConfig.from_dict({**CICLDConfig.preset("tiny").to_dict(), key: value})


def test_an_integer_where_a_number_belongs_is_accepted_as_that_number():
    assert CICLDConfig.from_dict({**CICLDConfig.preset("tiny").to_dict(), "t_star": 1}).t_star == 1.0


def test_default_config_is_the_base_preset_with_the_cityscapes_classes():
    assert CICLDConfig() == CICLDConfig.preset("base")
    assert CICLDConfig().num_classes == NUM_CLASSES == 19


def test_tiny_preset_has_under_a_million_parameters(model):
    assert 100_000 < model.parameter_counts()["total"] < 1_000_000


def test_forward_train_returns_everything_the_losses_need_at_the_right_shapes(model):
    out = model.forward_train(images(2), labels(2), generator=seeded())
    latent = (2, 4, H // 8, W // 8)
    for key in ("z0", "noise", "z_t", "noise_pred", "z0_hat"):
        assert out[key].shape == latent, key
    assert out["t"].shape == (2,) and out["t"].dtype == torch.long
    assert out["condition"].shape == (2, model.config.unet_block_out_channels[-1])
    assert out["logits"].shape == (2, NUM_CLASSES, H, W)


def test_forward_train_segments_only_the_leading_images_it_is_asked_to(model):
    full = model.forward_train(images(3), labels(3), generator=seeded())
    part = model.forward_train(images(3), labels(3), generator=seeded(), num_segmented=2)
    assert part["logits"].shape == (2, NUM_CLASSES, H, W) and part["z0_hat"].shape[0] == 3
    torch.testing.assert_close(part["logits"], full["logits"][:2], rtol=0, atol=1e-5)


def test_predict_returns_logits_at_the_input_resolution(model):
    assert model.predict(images(2)).shape == (2, NUM_CLASSES, H, W)


def test_predict_pads_sizes_that_are_not_multiples_of_the_size_divisor(model):
    assert model.predict(images(1, 50, 90)).shape == (1, NUM_CLASSES, 50, 90)


def test_encode_returns_the_latent_and_one_feature_per_scale(model):
    z0, features = model.encode(images())
    assert z0.shape == (1, 4, H // 8, W // 8)
    widths = model.config.ae_block_out_channels
    assert [f.shape[1:] for f in features] == [(w, H // 2**k, W // 2**k) for k, w in enumerate(widths)]


def test_reconstruct_returns_an_rgb_image(model):
    assert model.reconstruct(images()).shape == (1, 3, H, W)


@pytest.mark.parametrize("preset", ["base", "sd-vae"])
def test_large_presets_produce_the_right_shapes_without_allocating_weights(preset):
    with torch.device("meta"):
        model = CICLD(CICLDConfig.preset(preset))
        x = torch.empty(2, 3, 512, 512)
        out = model.forward_train(x, torch.zeros(2, 512, 512, dtype=torch.long))
    assert out["z0_hat"].shape == (2, 4, 64, 64)
    assert out["logits"].shape == (2, NUM_CLASSES, 512, 512)
    assert model.reconstruct(x).shape == (2, 3, 512, 512)


def test_base_preset_is_an_f8_autoencoder_with_a_tens_of_millions_unet():
    with torch.device("meta"):
        counts = CICLD(CICLDConfig.preset("base")).parameter_counts()
    assert CICLDConfig.preset("base").vae_scale_factor == 8
    assert 20e6 < counts["unet"] < 60e6


def test_sd_vae_preset_has_the_stable_diffusion_autoencoder_size():
    with torch.device("meta"):
        counts = CICLD(CICLDConfig.preset("sd-vae")).parameter_counts()
    # diffusers' SD AutoencoderKL: 34,163,592 encoder params + 72 of quant_conv; 49,490,179 decoder + 20.
    assert counts["encoder"] == 34_163_664
    assert counts["decoder"] == 49_490_199


def test_tiny_prediction_at_64x128_costs_under_half_a_gflop(model):
    # Speed itself is measured in benchmarks/, not asserted here; the cost in FLOPs is exact.
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model.predict(images())
    assert 0 < counter.get_total_flops() < 0.5e9


def test_segmentation_runs_the_decoder_only_at_the_latent_scale(model):
    called = []
    hooks = [
        m.register_forward_hook(lambda *a, name=n: called.append(name))
        for n, m in (
            ("up_blocks.1", model.decoder.up_blocks[1]),
            ("up_blocks.2", model.decoder.up_blocks[2]),
            ("up_blocks.3", model.decoder.up_blocks[3]),
            ("conv_out", model.decoder.conv_out),
            ("up_blocks.0.upsampler", model.decoder.up_blocks[0].upsamplers[0]),
        )
    ]
    try:
        model.predict(images())
        model.forward_train(images(), labels())
    finally:
        for h in hooks:
            h.remove()
    assert called == []


# ---------------------------------------------------------------------- determinism
def test_forward_train_is_deterministic_for_a_seeded_generator(model):
    a = model.forward_train(images(), labels(), generator=seeded(5))
    b = model.forward_train(images(), labels(), generator=seeded(5))
    assert torch.equal(a["t"], b["t"]) and torch.equal(a["noise"], b["noise"])
    assert torch.equal(a["logits"], b["logits"])


def test_forward_train_draws_new_noise_for_another_seed(model):
    a = model.forward_train(images(), generator=seeded(5))
    b = model.forward_train(images(), generator=seeded(6))
    assert not torch.equal(a["noise"], b["noise"])


def test_predict_is_deterministic_without_a_generator(model):
    assert torch.equal(model.predict(images(), steps=2), model.predict(images(), steps=2))


def test_a_prediction_does_not_depend_on_the_other_images_in_its_batch(model):
    alone = model.predict(images(seed=1), steps=1)
    for others in (images(seed=3), images(batch=3, seed=4)):
        in_batch = model.predict(torch.cat([others, images(seed=1)]), steps=1)[-1:]
        torch.testing.assert_close(in_batch, alone, rtol=0, atol=1e-5)
        assert torch.equal(in_batch.argmax(1), alone.argmax(1))


def test_sliding_window_prediction_does_not_depend_on_the_other_images_in_its_batch(model):
    alone = model.predict_sliding(images(seed=1), window=64, overlap=16, steps=1)
    in_batch = model.predict_sliding(torch.cat([images(seed=3), images(seed=1)]), window=64, overlap=16, steps=1)[-1:]
    torch.testing.assert_close(in_batch, alone, rtol=0, atol=1e-5)


def test_predict_with_zero_steps_ignores_the_noise_seed(model):
    assert torch.equal(
        model.predict(images(), steps=0, generator=seeded(1)), model.predict(images(), steps=0, generator=seeded(2))
    )


def test_predict_with_steps_depends_on_the_noise_seed(model):
    assert not torch.equal(
        model.predict(images(), steps=1, generator=seeded(1)), model.predict(images(), steps=1, generator=seeded(2))
    )


def test_refinement_passes_condition_on_the_previous_prediction(model):
    plain = model.predict(images(), steps=1)
    refined = model.predict(images(), steps=1, refine=1)
    assert refined.shape == plain.shape and not torch.equal(refined, plain)


def test_batchnorm_layers_of_a_frozen_part_keep_their_statistics_in_training():
    torch.manual_seed(0)
    model = CICLD(CICLDConfig.preset("tiny", ae_norm="batch"))
    model.encoder.requires_grad_(False)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_mean" in k}
    model.forward_train(images(2), labels(2), generator=seeded())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))


# ---------------------------------------------------------------------- architecture switches
@pytest.mark.parametrize(
    "switch, value, part",
    [
        ("inter_coder", False, "decoder.fusions."),
        ("conditioning", False, "mask_encoder."),
        ("discriminator", "2class", "discriminator."),
    ],
)
def test_with_switches_changes_only_the_switched_part_and_keeps_every_other_weight(switch, value, part):
    model = tiny()
    switched = model.with_switches(**{switch: value})
    assert getattr(switched.config, switch) == value and getattr(model.config, switch) != value
    before, after = model.state_dict(), switched.state_dict()
    assert {k for k in before if not k.startswith(part)} == {k for k in after if not k.startswith(part)}
    assert all(torch.equal(before[k], after[k]) for k in after if not k.startswith(part))
    if switch == "discriminator":
        assert switched.discriminator.fc2.out_features == 2
    else:
        assert not any(k.startswith(part) for k in after)
        back = switched.with_switches(**{switch: True})  # switched on again: the part starts afresh
        assert any(k.startswith(part) for k in back.state_dict())


def test_with_switches_returns_the_same_model_when_nothing_changes():
    model = tiny()
    assert model.with_switches(inter_coder=True, conditioning=True) is model


def test_with_switches_refuses_a_field_that_is_not_a_switch():
    with pytest.raises(CicldError, match="not an architecture switch: latent_channels"):
        tiny().with_switches(latent_channels=8)


# ---------------------------------------------------------------------- inter-coder connection
def test_inter_coder_switch_off_removes_exactly_the_fusion_parameters():
    on, off = tiny(), tiny(inter_coder=False)
    fusion = on.parameter_counts()["inter_coder"]
    assert fusion > 0 and off.parameter_counts()["inter_coder"] == 0
    assert on.parameter_counts()["total"] - off.parameter_counts()["total"] == fusion
    assert not [k for k in off.state_dict() if "fusions" in k]


def test_inter_coder_connection_starts_as_the_identity():
    model = tiny()
    x = images()
    assert torch.equal(model.predict(x, use_inter_coder=True), model.predict(x, use_inter_coder=False))


def test_inter_coder_connection_can_be_turned_off_per_call_while_its_parameters_exist():
    model = tiny()
    perturb_fusions(model)
    x = images()
    assert not torch.equal(model.predict(x, use_inter_coder=True), model.predict(x, use_inter_coder=False))
    ablated = tiny(inter_coder=False)
    ablated.load_state_dict({k: v for k, v in model.state_dict().items() if "fusions" not in k})
    a = model.forward_train(x, generator=seeded(), use_inter_coder=False)["logits"]
    b = ablated.forward_train(x, generator=seeded())["logits"]
    assert torch.equal(a, b)


def test_autoencoder_reconstruction_never_uses_the_inter_coder_connection():
    model = tiny()
    before = model.reconstruct(images())
    perturb_fusions(model)
    assert torch.equal(model.reconstruct(images()), before)


# ---------------------------------------------------------------------- conditioning
def test_eq5_with_a_zero_condition_is_the_identity():
    hidden = torch.randn(2, 16, 3, 5)
    assert torch.equal(eq5_condition(hidden, torch.zeros(2, 16)), hidden)


def test_eq5_adds_the_condition_gated_by_its_scaled_dot_product_with_each_position():
    hidden, c = torch.randn(1, 4, 2, 2), torch.randn(1, 4)
    out = eq5_condition(hidden, c)
    for i in range(2):
        for j in range(2):
            o = hidden[0, :, i, j]
            expected = o + torch.sigmoid(o @ c[0] / 2.0) * c[0]
            torch.testing.assert_close(out[0, :, i, j], expected)


def test_one_hot_labels_give_all_zero_vectors_for_ignored_pixels():
    onehot = one_hot_labels(torch.tensor([[[0, 3, 255]]]), num_classes=4)
    assert onehot[0, :, 0, 0].tolist() == [1, 0, 0, 0]
    assert onehot[0, :, 0, 1].tolist() == [0, 0, 0, 1]
    assert onehot[0, :, 0, 2].tolist() == [0, 0, 0, 0]


def test_zero_condition_through_the_unet_equals_no_condition(model):
    z, t = torch.randn(1, 4, 8, 16), torch.tensor([50])
    cond = torch.zeros(1, model.config.unet_block_out_channels[-1])
    assert torch.equal(model.predict_noise(z, t, cond), model.predict_noise(z, t, None))


def test_the_condition_enters_the_unet_after_its_mid_block(model):
    z, t = torch.randn(1, 4, 8, 16), torch.tensor([50])
    cond = torch.randn(1, model.config.unet_block_out_channels[-1])
    assert not torch.allclose(model.predict_noise(z, t, cond), model.predict_noise(z, t, None))
    # Nothing is left behind on the module: the next unconditioned call is unaffected.
    assert torch.equal(model.predict_noise(z, t, None), model.predict_noise(z, t, None))


@pytest.mark.parametrize("timestep", [torch.tensor([50]), torch.tensor(50), torch.tensor([10, 900])])
def test_the_conditioned_unet_is_diffusers_unet_with_eq5_hooked_onto_its_mid_block(model, timestep):
    """The same weights give the same outputs as diffusers' own UNet2DModel with Eq. 5 applied to
    its mid-block's output by a forward hook (how cicld applied it before)."""
    from diffusers import UNet2DModel

    unet = model.unet
    reference = UNet2DModel.from_config(unet.config)
    assert list(reference.state_dict()) == list(unet.state_dict())  # the same parameter names
    reference.load_state_dict(unet.state_dict())
    z = torch.randn(2, 4, 8, 16, generator=seeded(4))
    condition = torch.randn(2, model.config.unet_block_out_channels[-1], generator=seeded(5))
    hooked = []
    reference.mid_block.register_forward_hook(
        lambda module, args, out: eq5_condition(out, hooked[0]) if hooked else out
    )
    with torch.no_grad():
        assert torch.equal(unet(z, timestep), reference(z, timestep).sample)
        hooked.append(condition)
        assert torch.equal(unet(z, timestep, condition), reference(z, timestep).sample)


def test_the_conditioned_unet_draws_the_same_initial_weights_as_diffusers_unet():
    from diffusers import UNet2DModel

    from cicld.models.unet import ConditionedUNet

    settings = dict(block_out_channels=(8, 16), norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"))
    settings["up_block_types"] = ("AttnUpBlock2D", "UpBlock2D")
    torch.manual_seed(0)
    ours = ConditionedUNet(**settings).state_dict()
    torch.manual_seed(0)
    theirs = UNet2DModel(**settings).state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs) and ours.keys() == theirs.keys()


def test_a_unet_the_forward_does_not_cover_is_refused_in_one_line():
    from cicld.models.unet import ConditionedUNet

    with pytest.raises(CicldError, match="does not support: center_input_sample"):
        ConditionedUNet(
            block_out_channels=(8, 16),
            norm_num_groups=4,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            center_input_sample=True,
        )


def test_labels_change_the_output_when_conditioning_is_on(model):
    x = images()
    a = model.forward_train(x, labels(seed=2), generator=seeded(), condition_dropout=0.0)["logits"]
    b = model.forward_train(x, labels(seed=3), generator=seeded(), condition_dropout=0.0)["logits"]
    assert not torch.allclose(a, b)


def test_conditioning_switch_off_removes_the_mask_encoder_and_ignores_labels():
    model = tiny(conditioning=False)
    assert model.mask_encoder is None
    assert (
        tiny().parameter_counts()["total"] - model.parameter_counts()["total"]
        == tiny().parameter_counts()["mask_encoder"]
    )
    x = images()
    a = model.forward_train(x, labels(seed=2), generator=seeded(), condition_dropout=0.0)
    b = model.forward_train(x, labels(seed=3), generator=seeded(), condition_dropout=0.0)
    assert a["condition"] is None and torch.equal(a["logits"], b["logits"])


def test_missing_labels_give_the_null_condition(model):
    x = images()
    out = model.forward_train(x, None, generator=seeded())
    zero = model.forward_train(x, torch.full((1, H, W), 255), generator=seeded(), condition_dropout=0.0)
    assert out["condition"] is None
    assert torch.count_nonzero(zero["condition"]) == 0
    assert torch.equal(out["logits"], zero["logits"])


def test_condition_dropout_of_one_gives_the_null_condition(model):
    x = images()
    dropped = model.forward_train(x, labels(), generator=seeded(), condition_dropout=1.0)
    unlabelled = model.forward_train(x, None, generator=seeded())
    assert torch.count_nonzero(dropped["condition"]) == 0
    torch.testing.assert_close(dropped["logits"], unlabelled["logits"])


def test_condition_dropout_drops_about_its_probability_of_samples():
    model = tiny()
    c = model.condition(labels(400, 8, 8), dropout=0.3, generator=seeded())
    dropped = (c.abs().sum(dim=1) == 0).float().mean().item()
    assert 0.2 < dropped < 0.4


def test_condition_dropout_is_on_in_train_mode_and_off_in_eval_mode_by_default():
    model = tiny(condition_dropout=1.0)
    assert torch.count_nonzero(model.forward_train(images(), labels(), generator=seeded())["condition"]) > 0
    model.train()
    assert torch.count_nonzero(model.forward_train(images(), labels(), generator=seeded())["condition"]) == 0


def test_an_ema_deep_copy_conditions_its_own_unet():
    model = tiny()
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in ema.unet.mid_block.parameters():
            p.add_(0.1)
    z, t = torch.randn(1, 4, 8, 16), torch.tensor([50])
    cond = torch.randn(1, model.config.unet_block_out_channels[-1])
    assert not torch.allclose(ema.predict_noise(z, t, cond), ema.predict_noise(z, t, None))
    assert not torch.allclose(ema.predict_noise(z, t, cond), model.predict_noise(z, t, cond))


def test_mask_encoder_loads_a_local_safetensors_file(tmp_path):
    source, target = tiny(), tiny()
    with torch.no_grad():
        for p in source.mask_encoder.parameters():
            p.add_(1.0)
    save_file(source.mask_encoder.state_dict(), str(tmp_path / "f_mask.safetensors"))
    target.load_mask_encoder(tmp_path / "f_mask.safetensors")
    y = labels()
    assert torch.equal(target.mask_encoder(y), source.mask_encoder(y))


def test_mask_encoder_weights_with_other_shapes_are_rejected(tmp_path):
    other = CICLD(CICLDConfig.preset("tiny", mask_encoder_channels=(4, 8)))
    save_file(other.mask_encoder.state_dict(), str(tmp_path / "f_mask.safetensors"))
    with pytest.raises(CicldError, match="mask encoder weights .* do not fit"):
        tiny().load_mask_encoder(tmp_path / "f_mask.safetensors")


# ---------------------------------------------------------------------- discriminator
def test_three_class_discriminator_scores_source_mixed_and_target(model):
    assert model.discriminator(torch.randn(2, 4, 8, 16)).shape == (2, 3)
    assert [model.discriminator.domain_index(d) for d in ("source", "mixed", "target")] == [0, 1, 2]


def test_two_class_discriminator_variant_scores_source_and_target():
    model = tiny(discriminator="2class")
    assert model.discriminator(torch.randn(2, 4, 8, 16)).shape == (2, 2)
    assert model.discriminator.domain_index("target") == 1
    with pytest.raises(ValueError, match="mixed"):
        model.discriminator.domain_index("mixed")


# ---------------------------------------------------------------------- sliding window
def test_sliding_window_covering_the_whole_image_equals_whole_image_prediction(model):
    x = images(2)
    for steps in (0, 2):
        whole = model.predict(x, steps=steps)
        torch.testing.assert_close(
            model.predict_sliding(x, window=(128, 64), overlap=0, steps=steps), whole, rtol=0, atol=0
        )
        torch.testing.assert_close(model.predict_sliding(x, window=256, overlap=32, steps=steps), whole, rtol=0, atol=0)


def test_sliding_windows_tiling_the_image_once_equal_per_window_predictions(model):
    x = images(1, 64, 256)
    noise = torch.randn(1, 4, 8, 32, generator=seeded(9))
    out = model.predict_sliding(x, window=(128, 64), overlap=0, steps=1, generator=seeded(9))
    torch.testing.assert_close(out[..., :128], model.predict(x[..., :128], steps=1, noise=noise[..., :16]))
    torch.testing.assert_close(out[..., 128:], model.predict(x[..., 128:], steps=1, noise=noise[..., 16:]))


def test_sliding_windows_average_logits_where_they_overlap(model):
    x = images(1, 64, 192)
    out = model.predict_sliding(x, window=(128, 64), overlap=(64, 0), steps=0)
    left, right = model.predict(x[..., :128], steps=0), model.predict(x[..., 64:], steps=0)
    torch.testing.assert_close(out[..., :64], left[..., :64])
    torch.testing.assert_close(out[..., 64:128], (left[..., 64:] + right[..., :64]) / 2)
    torch.testing.assert_close(out[..., 128:], right[..., 64:])


def test_window_batch_size_does_not_change_the_result(model):
    x = images(2, 64, 256)
    one = model.predict_sliding(x, window=64, overlap=32, window_batch=1, steps=1)
    many = model.predict_sliding(x, window=64, overlap=32, window_batch=5, steps=1)
    torch.testing.assert_close(one, many, rtol=1e-5, atol=1e-5)


def test_sliding_window_handles_sizes_that_are_not_multiples_of_the_window(model):
    assert model.predict_sliding(images(1, 70, 200), window=64, overlap=32).shape == (1, NUM_CLASSES, 70, 200)


def test_sliding_window_rejects_windows_off_the_size_divisor(model):
    with pytest.raises(CicldError, match="multiple of 16"):
        model.predict_sliding(images(), window=40, overlap=8)
    with pytest.raises(CicldError, match="overlap"):
        model.predict_sliding(images(), window=64, overlap=12)


# ---------------------------------------------------------------------- checkpoints
def test_save_and_load_give_bit_identical_outputs(tmp_path):
    model = tiny(inter_coder=True)
    perturb_fusions(model)
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    loaded = CICLD.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config == model.config
    x, y = images(), labels()
    assert torch.equal(loaded.predict(x, steps=2, refine=1), model.predict(x, steps=2, refine=1))
    a = model.forward_train(x, y, generator=seeded())
    b = loaded.forward_train(x, y, generator=seeded())
    assert torch.equal(a["logits"], b["logits"])


def test_a_model_folder_is_rebuilt_from_its_own_config_not_from_todays_preset_defaults(tmp_path):
    """A preset may change (base went from two resnets per autoencoder block to one); a folder
    saved before keeps its architecture because config.json spells out every field."""
    model = tiny(ae_layers_per_block=2)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert saved["ae_layers_per_block"] == 2 != CICLDConfig.preset("tiny").ae_layers_per_block
    assert saved.keys() == CICLDConfig().to_dict().keys()
    loaded = CICLD.from_pretrained(tmp_path).eval()
    assert len(loaded.encoder.down_blocks[0].resnets) == 2
    assert torch.equal(loaded.predict(images(), steps=1), model.predict(images(), steps=1))


def test_loading_weights_with_a_missing_key_names_it(tmp_path):
    tiny().save_pretrained(tmp_path)
    state = load_file(str(tmp_path / WEIGHTS_NAME))
    del state["decoder.f_cls.classifier.bias"]
    save_file(state, str(tmp_path / WEIGHTS_NAME))
    with pytest.raises(CicldError, match="1 missing keys: decoder.f_cls.classifier.bias"):
        CICLD.from_pretrained(tmp_path)


def test_loading_weights_with_unexpected_keys_names_them(tmp_path):
    tiny().save_pretrained(tmp_path)
    state = load_file(str(tmp_path / WEIGHTS_NAME))
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / WEIGHTS_NAME))
    with pytest.raises(CicldError, match="unexpected keys: extra.weight"):
        CICLD.from_pretrained(tmp_path)


def test_loading_weights_into_a_different_architecture_names_the_mismatched_keys(tmp_path):
    tiny().save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config["num_classes"] = 7
    config["classes"] = {"classes": [{"name": f"class {i}", "color": [i, i, i]} for i in range(7)]}
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(
        CicldError, match=r"shape mismatches: decoder.f_cls.classifier.weight \(19, 32, 1, 1\) vs \(7, 32, 1, 1\)"
    ):
        CICLD.from_pretrained(tmp_path)


def test_loading_an_ablation_checkpoint_into_the_full_model_is_rejected(tmp_path):
    tiny(inter_coder=False).save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config["inter_coder"] = True
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(CicldError, match="missing keys: decoder.fusions"):
        CICLD.from_pretrained(tmp_path)


def test_loading_from_a_missing_directory_or_config_is_a_clear_error(tmp_path):
    with pytest.raises(CicldError, match="model directory not found"):
        CICLD.from_pretrained(tmp_path / "nope")
    with pytest.raises(CicldError, match="config.json is missing"):
        CICLD.from_pretrained(tmp_path)
    (tmp_path / CONFIG_NAME).write_text(json.dumps(CICLDConfig.preset("tiny").to_dict()))
    with pytest.raises(CicldError, match="model.safetensors is missing"):
        CICLD.from_pretrained(tmp_path)


# ---------------------------------------------------------------------- AutoencoderKL initialisation
def tiny_autoencoder_kl(config: CICLDConfig, scaling_factor: float = 0.5) -> AutoencoderKL:
    torch.manual_seed(11)
    n = len(config.ae_block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=config.ae_block_out_channels,
        layers_per_block=config.ae_layers_per_block,
        latent_channels=config.latent_channels,
        norm_num_groups=config.ae_norm_num_groups,
        mid_block_add_attention=config.ae_mid_block_attention,
        scaling_factor=scaling_factor,
    ).eval()


@pytest.mark.parametrize("attention", [False, True])
def test_a_diffusers_autoencoder_kl_directory_initialises_encoder_and_decoder(tmp_path, attention):
    model = tiny(ae_mid_block_attention=attention)
    autoencoder = tiny_autoencoder_kl(model.config)
    autoencoder.save_pretrained(tmp_path / "vae")
    model.load_autoencoder_kl(tmp_path / "vae")
    x = images()
    with torch.no_grad():
        posterior = autoencoder.encode(x).latent_dist
        z0, _ = model.encode(x)
        assert torch.equal(model.encode_posterior(x).mean, posterior.mean)
        assert torch.equal(model.encode_posterior(x).logvar, posterior.logvar)
        torch.testing.assert_close(z0, posterior.mean * 0.5, rtol=0, atol=0)
        assert torch.equal(model.reconstruct(x), autoencoder(x).sample)
    assert model.config.scaling_factor == 0.5


def test_an_autoencoder_kl_with_other_widths_is_rejected_with_the_differences(tmp_path):
    model = tiny()
    other = tiny_autoencoder_kl(CICLDConfig.preset("tiny", ae_block_out_channels=(8, 16, 16, 16)))
    other.save_pretrained(tmp_path / "vae")
    with pytest.raises(CicldError, match=r"block_out_channels \(8, 16, 16, 16\) \(model has \(8, 16, 16, 32\)\)"):
        model.load_autoencoder_kl(tmp_path / "vae")


def test_a_missing_autoencoder_directory_is_a_clear_error(tmp_path):
    with pytest.raises(CicldError, match="autoencoder directory not found"):
        tiny().load_autoencoder_kl(tmp_path / "nope")


def test_an_autoencoder_kl_config_lacking_a_setting_is_a_one_line_error_not_a_guess(tmp_path, monkeypatch):
    from diffusers.configuration_utils import FrozenDict

    model = tiny(ae_mid_block_attention=True)
    tiny_autoencoder_kl(model.config).save_pretrained(tmp_path / "vae")
    load = AutoencoderKL.from_pretrained

    def without_attention_setting(*args, **kwargs):  # as a config written without the key reads
        autoencoder = load(*args, **kwargs)
        autoencoder._internal_dict = FrozenDict(
            {k: v for k, v in autoencoder.config.items() if k != "mid_block_add_attention"}
        )
        return autoencoder

    monkeypatch.setattr(AutoencoderKL, "from_pretrained", without_attention_setting)
    with pytest.raises(
        CicldError, match="lacks mid_block_add_attention; cannot check that it matches this model"
    ) as error:
        model.load_autoencoder_kl(tmp_path / "vae")
    assert "\n" not in str(error.value)


def test_an_autoencoder_kl_whose_decoder_does_not_fit_is_refused_before_anything_is_loaded(tmp_path, monkeypatch):
    model = tiny()
    tiny_autoencoder_kl(model.config).save_pretrained(tmp_path / "vae")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state_dict = AutoencoderKL.state_dict

    def with_a_stray_decoder_key(self, *args, **kwargs):
        return {**state_dict(self, *args, **kwargs), "decoder.stray.weight": torch.zeros(1)}

    monkeypatch.setattr(AutoencoderKL, "state_dict", with_a_stray_decoder_key)
    with pytest.raises(CicldError, match=r"decoder weights of .* do not fit the model: .*stray\.weight"):
        model.load_autoencoder_kl(tmp_path / "vae")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_asking_for_the_inference_timesteps_leaves_predictions_unchanged():
    model = tiny(inference_steps=2)
    x = images()
    expected = model.predict(x)
    for steps in (1, 2, 2, 4):  # twice, and other step counts, before predicting again
        model.diffusion.inference_timesteps(steps)
    assert torch.equal(model.predict(x), expected)
    assert torch.equal(model.predict(x, steps=1), tiny(inference_steps=2).predict(x, steps=1))
