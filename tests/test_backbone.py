"""Specification of ``--backbone``: a pretrained transformers image model as E's feature pyramid.

Every backbone here is a tiny random model of the real class, written by the library's own
``save_pretrained`` in the test: the tests never download (conftest sets HF_HUB_OFFLINE).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import (
    ConvNextBackbone,
    ConvNextConfig,
    ConvNextForImageClassification,
    Dinov2Backbone,
    Dinov2Config,
    Dinov2Model,
    SegformerConfig,
    SegformerForImageClassification,
    SegformerModel,
)

from cicld.data.labels import CITYSCAPES, IGNORE_INDEX, ClassList
from cicld.errors import CicldError
from cicld.models import CICLD, CICLDConfig
from cicld.models.backbone import load_backbone, state_hash
from cicld.models.losses import THING_CLASSES, downscale_labels, feature_distance
from cicld.training.common import feature_distance_classes
from cicld.training.objectives import FeatureDistance
from cicld.training.runs import stage_runs

from conftest import stage_flags

pytestmark = pytest.mark.usefixtures("single_thread")


def _convnext_config() -> ConvNextConfig:
    return ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 2, 1], num_labels=5)


def _dinov2_config() -> Dinov2Config:
    return Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, patch_size=14)


def _mit_config() -> SegformerConfig:
    return SegformerConfig(
        hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 2], num_labels=5
    )


def _save(model, folder: Path) -> Path:
    torch.manual_seed(0)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def convnext(tmp_path_factory) -> Path:
    """An ImageNet-style ConvNeXt checkpoint: a classifier, as the hub's are."""
    torch.manual_seed(0)
    return _save(ConvNextForImageClassification(_convnext_config()), tmp_path_factory.mktemp("convnext"))


@pytest.fixture(scope="module")
def dinov2(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return _save(Dinov2Model(_dinov2_config()), tmp_path_factory.mktemp("dinov2"))


@pytest.fixture(scope="module")
def mit(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return _save(SegformerForImageClassification(_mit_config()), tmp_path_factory.mktemp("mit"))


def _images(height=64, width=128, seed=1):
    return torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- the library's own features
def test_a_convnext_backbone_gives_the_libraries_own_feature_maps_at_strides_4_to_32(convnext):
    backbone, _ = load_backbone(str(convnext))
    reference = ConvNextBackbone.from_pretrained(convnext, out_features=["stage1", "stage2", "stage3", "stage4"]).eval()
    x = _images()
    with torch.no_grad():
        ours, theirs = backbone.eval()(x), reference(x).feature_maps
    assert [tuple(f.shape[-2:]) for f in ours] == [(16, 32), (8, 16), (4, 8), (2, 4)]
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_a_dinov2_backbone_reads_four_layers_of_the_library_on_a_1_16_patch_grid_and_builds_a_pyramid(dinov2):
    backbone, record = load_backbone(str(dinov2))
    assert record.config["out_features"] == ["stage1", "stage2", "stage3", "stage4"]
    reference = Dinov2Backbone.from_pretrained(
        dinov2, out_features=["stage1", "stage2", "stage3", "stage4"], reshape_hidden_states=True
    ).eval()
    x = _images()
    with torch.no_grad():
        raw = backbone.eval().raw_features(x)
        theirs = reference(F.interpolate(x, size=(4 * 14, 8 * 14), mode="bilinear", align_corners=False)).feature_maps
        pyramid = backbone(x)
    assert all(torch.equal(a, b) for a, b in zip(raw, theirs))
    assert [tuple(f.shape[-3:]) for f in pyramid] == [(8, 16, 32), (16, 8, 16), (32, 4, 8), (32, 2, 4)]


def test_a_mit_backbone_gives_segformers_four_encoder_stages(mit):
    backbone, _ = load_backbone(str(mit))
    reference = SegformerModel.from_pretrained(mit).eval()
    x = _images()
    with torch.no_grad():
        ours, theirs = backbone.eval()(x), reference(x, output_hidden_states=True).hidden_states
    assert [f.shape[1] for f in ours] == [8, 16, 32, 64]
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


# ---------------------------------------------------------------- the model folder
def _backbone_model(folder: Path, preset: str = "tiny") -> CICLD:
    backbone, record = load_backbone(str(folder))
    config = CICLDConfig.preset(preset).replace(
        backbone=record.config, backbone_source=record.source, backbone_sha256=record.sha256
    )
    torch.manual_seed(0)
    model = CICLD(config)
    model.encoder.backbone.model.load_state_dict(backbone.model.state_dict())
    return model.eval()


@pytest.mark.parametrize("family", ["convnext", "dinov2", "mit"])
def test_a_model_folder_with_a_backbone_reloads_without_its_source_and_predicts_identically(family, request, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(request.getfixturevalue(family), source)
    model = _backbone_model(source)
    with torch.no_grad():
        for p in model.decoder.fusions.parameters():  # as training moves the zero-initialised fusions
            p.normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
    model.save_pretrained(tmp_path / "model")
    shutil.rmtree(source)  # the model folder holds every weight it needs
    reloaded = CICLD.from_pretrained(tmp_path / "model").eval()
    x = _images()
    assert torch.equal(model.predict(x), reloaded.predict(x))
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["backbone_source"] == str(source.resolve())
    assert (
        saved["backbone_sha256"]
        == state_hash(model.encoder.backbone.model)
        == state_hash(reloaded.encoder.backbone.model)
    )


def test_the_backbones_weights_are_part_of_the_models_parameters_and_its_own_optimizer_group(convnext):
    model = _backbone_model(convnext)
    groups = model.parameter_groups()
    backbone = {id(p) for p in model.encoder.backbone.model.parameters()}
    assert {id(p) for p in groups["backbone"]} == backbone
    assert not backbone & {id(p) for p in groups["pretrained"] + groups["heads"]}
    assert model.parameter_counts()["backbone"] == sum(p.numel() for p in model.encoder.backbone.model.parameters())


# ---------------------------------------------------------------- strict loading, one line
def test_a_checkpoint_may_differ_only_in_a_task_head_and_in_the_output_norms_a_backbone_class_adds(convnext):
    backbone, _ = load_backbone(str(convnext))  # classifier and final norm dropped, stage norms new: fine
    norms = {k: v for k, v in backbone.model.state_dict().items() if k.startswith("hidden_states_norms.")}
    assert norms and all(
        torch.equal(v, torch.ones_like(v) if k.endswith("weight") else torch.zeros_like(v)) for k, v in norms.items()
    )


def _edited_copy(folder: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "edited"
    shutil.copytree(folder, copy)
    weights = load_file(copy / "model.safetensors")
    save_file(edit(weights), copy / "model.safetensors", metadata={"format": "pt"})
    return copy


def test_an_unexpected_weight_is_a_one_line_error_naming_it(convnext, tmp_path):
    folder = _edited_copy(convnext, tmp_path, lambda w: {**w, "convnext.extra_block.weight": torch.zeros(3)})
    with pytest.raises(CicldError, match=r"do not fit its config: 1 unexpected keys: convnext\.extra_block\.weight"):
        load_backbone(str(folder))


def test_a_missing_weight_is_a_one_line_error_naming_it(convnext, tmp_path):
    folder = _edited_copy(convnext, tmp_path, lambda w: {k: v for k, v in w.items() if "stages.3" not in k})
    with pytest.raises(CicldError, match=r"do not fit its config: \d+ missing keys: .*stages\.3"):
        load_backbone(str(folder))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda folder: (folder / "model.safetensors").unlink(), "has a config.json but no weights"),
        (
            lambda folder: (folder / "model.safetensors").write_bytes(b"\x00" * 64),
            "cannot read its weights (SafetensorError",
        ),
        (
            lambda folder: (folder / "config.json").write_text(
                (folder / "config.json").read_text().replace('"hidden_sizes": [\n    8,', '"hidden_sizes": [\n    12,')
            ),
            "the weights do not fit its config: ",
        ),
        (lambda folder: None, "no such folder"),
    ],
    ids=["no-weights", "wrong-file", "mis-shaped", "missing-folder"],
)
def test_a_backbone_that_cannot_be_loaded_is_one_line_before_any_run_folder(
    cli, toy_root, convnext, tmp_path, make, message
):
    folder = tmp_path / "backbone"
    shutil.copytree(convnext, folder)
    make(folder)
    if message == "no such folder":
        folder = tmp_path / "nowhere" / "backbone"
    runs = tmp_path / "runs"
    result = cli("pretrain-ae", *stage_flags(toy_root, runs), "--backbone", folder)
    assert result.exit_code == 2, result.stdout
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: --backbone {folder}") and message in line
    assert not runs.exists()


def test_a_hub_id_that_is_not_cached_while_offline_is_one_line_saying_how_to_get_it(cli, toy_root, tmp_path):
    runs = tmp_path / "runs"
    result = cli("pretrain-ae", *stage_flags(toy_root, runs), "--backbone", "cicld-tests/no-such-backbone")
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line == (
        "error: --backbone cicld-tests/no-such-backbone: not in the hub cache, and HF_HUB_OFFLINE is set; download it "
        "where the hub can be reached (`hf download cicld-tests/no-such-backbone`) or give a local folder"
    )
    assert not runs.exists()


# ---------------------------------------------------------------- the stages
@pytest.fixture(scope="module")
def backbone_runs(toy_root, convnext, tmp_path_factory) -> Path:
    """pretrain-ae on the ConvNeXt, then pretrain-ldm with the feature distance on every pixel."""
    from cicld.cli import main

    runs = tmp_path_factory.mktemp("backbone_runs")
    for stage, extra in (
        ("pretrain-ae", ["--backbone", convnext]),
        (
            "pretrain-ldm",
            ["--feature-distance", "1", "--feature-distance-classes", "all", "--log-every", "1", "--steps", "4"],
        ),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([stage, *map(str, stage_flags(toy_root, runs)), *map(str, extra)])
        assert exit_info.value.code == 0
    return runs


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "final" / "model.safetensors")


def test_pretrain_ae_keeps_the_pretrained_backbone_as_it_was_loaded(backbone_runs, convnext):
    (run,) = stage_runs(backbone_runs, "pretrain-ae")
    loaded, _ = load_backbone(str(convnext))
    exported = _weights(run)
    assert all(torch.equal(exported[f"encoder.backbone.model.{k}"], v) for k, v in loaded.model.state_dict().items())


def test_the_feature_distance_is_zero_at_the_first_step_and_positive_once_the_backbone_has_moved(backbone_runs):
    (run,) = stage_runs(backbone_runs, "pretrain-ldm")
    with (run / "log.csv").open() as handle:
        distances = [float(row["feature_distance"]) for row in csv.DictReader(handle) if row["feature_distance"]]
    assert len(distances) == 4
    assert distances[0] == 0.0 and all(d > 0 for d in distances[1:])


def test_the_feature_distance_grows_with_how_far_the_backbone_moved_from_its_starting_copy(convnext):
    reference, _ = load_backbone(str(convnext))
    distance = FeatureDistance(reference, weight=1.0, classes=None, num_classes=19)
    x, labels = _images(), torch.zeros(2, 64, 128, dtype=torch.long)
    noise = [
        torch.randn(p.shape, generator=torch.Generator().manual_seed(i))
        for i, p in enumerate(reference.model.parameters())
    ]
    distances = []
    for scale in (0.0, 0.001, 0.01, 0.1):
        moved, _ = load_backbone(str(convnext))
        with torch.no_grad():
            for parameter, step in zip(moved.model.parameters(), noise):
                parameter.add_(scale * step)
            distances.append(distance(x, labels, moved.eval().raw_features(x)).item())
    assert distances[0] == 0.0
    assert distances == sorted(distances) and len(set(distances)) == 4


def test_adapt_trains_the_backbone_at_its_own_rate_and_leaves_frozen_stages_untouched(
    cli, toy_root, backbone_runs, tmp_path
):
    runs = tmp_path / "runs"
    shutil.copytree(backbone_runs, runs, symlinks=True)
    flags = ["--freeze-backbone-stages", "2", "--backbone-lr-mult", "0.5", "--method", "source-only"]
    result = cli("adapt", *stage_flags(toy_root, runs), *flags)
    assert result.exit_code == 0, result.stderr
    (start,), (run,) = stage_runs(runs, "pretrain-ldm"), stage_runs(runs, "adapt")
    before, after = _weights(start), _weights(run)
    frozen = (
        "encoder.backbone.model.embeddings.",
        "encoder.backbone.model.encoder.stages.0.",
        "encoder.backbone.model.encoder.stages.1.",
    )
    moved = "encoder.backbone.model.encoder.stages.3."
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(frozen))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(moved))


def test_the_feature_distance_refuses_a_starting_backbone_whose_weights_changed(
    cli, toy_root, backbone_runs, convnext, tmp_path
):
    runs = tmp_path / "runs"
    shutil.copytree(backbone_runs, runs, symlinks=True)
    (start,) = stage_runs(runs, "pretrain-ldm")
    config = json.loads((start / "final" / "config.json").read_text())
    changed = tmp_path / "changed"
    shutil.copytree(convnext, changed)
    weights = load_file(changed / "model.safetensors")
    save_file(
        {k: v + 1 if "stages.3" in k else v for k, v in weights.items()},
        changed / "model.safetensors",
        metadata={"format": "pt"},
    )
    config["backbone_source"] = str(changed)
    (start / "final" / "config.json").write_text(json.dumps(config))
    result = cli("adapt", *stage_flags(toy_root, runs), "--feature-distance", "0.1")
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "these are not the weights the model started from" in line
    assert stage_runs(runs, "adapt") == []


# ---------------------------------------------------------------- the feature distance itself
def test_the_feature_distance_is_the_mean_channel_norm_over_pixels_whose_pooled_label_is_a_thing():
    features = torch.zeros(1, 2, 2, 2)
    reference = torch.zeros(1, 2, 2, 2)
    features[0, :, 0, 0] = torch.tensor([3.0, 4.0])  # distance 5 at (0, 0)
    features[0, :, 1, 1] = torch.tensor([6.0, 8.0])  # distance 10 at (1, 1)
    labels = torch.full((1, 8, 8), 0)  # road: no thing
    labels[0, :4, :4] = 13  # car fills the window of (0, 0)
    labels[0, 4:, 4:] = 11  # person on 3/4 of the window of (1, 1) ...
    labels[0, 4:5, 4:] = 0  # ... and road on the rest: at the 0.75 threshold, it counts
    assert feature_distance(features, reference) == pytest.approx(15 / 4)
    assert feature_distance(features, reference, labels, THING_CLASSES, 19) == pytest.approx(7.5)
    labels[0, 5:6, 4:] = IGNORE_INDEX  # now person covers half of it: too mixed to count
    assert feature_distance(features, reference, labels, THING_CLASSES, 19) == pytest.approx(5.0)
    assert downscale_labels(labels, (2, 2), 0.75, 19).tolist() == [[[13, 0], [0, IGNORE_INDEX]]]


def test_no_thing_pixel_gives_a_zero_feature_distance_that_stays_in_the_graph():
    features = torch.ones(1, 2, 2, 2, requires_grad=True)
    distance = feature_distance(
        features, torch.zeros(1, 2, 2, 2), torch.zeros(1, 8, 8, dtype=torch.long), THING_CLASSES, 19
    )
    assert distance.item() == 0.0 and distance.requires_grad


def test_the_feature_distance_counts_cityscapes_things_by_default_and_every_pixel_of_your_own_classes():
    own = ClassList.from_dict(
        {"classes": [{"name": n, "color": [i] * 3} for i, n in enumerate(("ground", "tree", "cart"))]}
    )
    assert feature_distance_classes("auto", CITYSCAPES) == THING_CLASSES
    assert feature_distance_classes("auto", own) is None
    assert feature_distance_classes("all", CITYSCAPES) is None
    with pytest.raises(CicldError, match="--feature-distance-classes all"):
        feature_distance_classes("things", own)  # ids 6-18 are not things there


def test_a_backbone_whose_features_are_not_at_strides_4_to_32_is_refused_in_one_line(tmp_path):
    config = _convnext_config()
    config.patch_size = 2  # a stem of stride 2: features at 1/2 ... 1/16
    folder = _save(ConvNextForImageClassification(config), tmp_path / "stride2")
    with pytest.raises(
        CicldError, match=r"its four feature maps are at strides \[2, 4, 8, 16\]; cicld needs \[4, 8, 16, 32\]"
    ):
        load_backbone(str(folder))
