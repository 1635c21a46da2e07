"""A pretrained image model of transformers as E's feature pyramid (``--backbone``).

::

    image ─ backbone ─► features at 1/4, 1/8, 1/16, 1/32 of the image
              ConvNeXt, ResNet, Swin... (transformers' AutoBackbone): its last four stages
              DINOv2 (AutoBackbone, one scale, 1/16): four layers through a simple pyramid (ViTDet)
              MiT, SegFormer's encoder (SegformerModel): its four stages

The weights come from where transformers itself loads them (:func:`load_backbone`): a local folder
as ``save_pretrained`` writes it, or a hub id through transformers' own download and cache, with
its offline switch (``HF_HUB_OFFLINE=1``) respected. Loading is strict: a checkpoint may lack only
the weights the backbone class adds to a plain model (ConvNeXt's per-stage output norms, which
start as the identity) and may hold only an image-classification or segmentation head beside the
backbone; any other missing, unexpected or mis-shaped key is a one-line error. A folder without
weights is an error too, never a randomly initialised backbone.

A model records its backbone's transformers config (so it rebuilds with no network), where the
weights came from and their hash (:func:`state_hash`), and holds the trained weights itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cicld.errors import CicldError
from cicld.models.state import key_problems

#: The strides of the four feature maps a backbone hands to E, as powers of two.
FEATURE_STRIDES = (4, 8, 16, 32)
#: Vision-transformer families: one feature scale, made into four by :class:`SimplePyramid`.
VIT_FAMILIES = ("dinov2", "dinov2_with_registers")
#: The encoder of SegFormer (MiT-B0 ... B5), which transformers offers as a plain model.
MIT_FAMILY = "segformer"
#: Weights a checkpoint may hold beside the backbone: a task head, dropped on loading.
HEAD_PREFIXES = ("classifier.", "pooler.", "decode_head.", "layernorm.")
#: Weights the backbone classes add to their plain models, which a classification checkpoint
#: lacks: ConvNeXt's per-stage output LayerNorms (initialised as the identity, weight 1, bias 0).
ADDED_PREFIXES = ("hidden_states_norms.",)
#: Config keys that say nothing about the architecture (and change from machine to machine).
_VOLATILE_KEYS = ("transformers_version", "_name_or_path", "_commit_hash", "architectures")


@dataclass(frozen=True)
class BackboneRecord:
    """What a model records of its pretrained backbone."""

    #: The transformers config (``to_dict()``), with cicld's choice of output stages.
    config: dict[str, Any]
    #: Where the weights came from: a hub id, or a local folder's absolute path.
    source: str
    #: :func:`state_hash` of the weights as loaded.
    sha256: str


class PretrainedBackbone(nn.Module):
    """A transformers image model whose forward returns four feature maps at strides 4–32.

    ``model`` holds the pretrained weights (what ``--backbone`` loads, what ``--feature-distance``
    compares, what ``--backbone-lr-mult`` scales); ``pyramid`` (vision transformers only) is new.
    """

    def __init__(self, config: dict[str, Any], model: nn.Module | None = None):
        """The backbone of the recorded ``config``: ``model`` if given (the loaded pretrained
        model), else a new one (whose weights a model folder's then replace)."""
        super().__init__()
        transformers_config = _config_from_dict(config)
        self.family = transformers_config.model_type
        self.model = model if model is not None else _model_class(transformers_config)(transformers_config)
        self.pyramid: SimplePyramid | None = None
        if self.family in VIT_FAMILIES:
            self.patch_size = transformers_config.patch_size
            self.pyramid = SimplePyramid(transformers_config.hidden_size)
            self.channels = self.pyramid.channels
        elif self.family == MIT_FAMILY:
            self.channels = tuple(transformers_config.hidden_sizes)
        else:
            self.channels = tuple(self.model.channels)
        if len(self.channels) != len(FEATURE_STRIDES):
            raise CicldError(f"a {self.family} backbone with {len(self.channels)} output stages; cicld needs 4")

    def raw_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The pretrained model's own feature maps (before the pyramid): what feature distance compares."""
        if self.family in VIT_FAMILIES:
            # A patch grid of 1/16 of the image: resize to (H/16, W/16) patches of the model's size.
            height, width = images.shape[-2:]
            size = (height // 16 * self.patch_size, width // 16 * self.patch_size)
            if size != (height, width):
                images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            return list(self.model(images).feature_maps)
        if self.family == MIT_FAMILY:
            return list(self.model(images, output_hidden_states=True).hidden_states)
        return list(self.model(images).feature_maps)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps at 1/4, 1/8, 1/16 and 1/32 of the image (rounded down)."""
        features = self.raw_features(images)
        return self.pyramid(features) if self.pyramid is not None else features

    def stages(self) -> list[nn.Module]:
        """The pretrained model's stem, then its four stages, input first (for ``--freeze-backbone-stages``)."""
        model = self.model
        if self.family in VIT_FAMILIES:
            layers = list(model.encoder.layer)
            quarter = len(layers) // 4
            return [model.embeddings] + [nn.ModuleList(layers[i * quarter : (i + 1) * quarter]) for i in range(4)]
        if self.family == MIT_FAMILY:
            encoder = model.encoder
            return [nn.ModuleList()] + [
                nn.ModuleList([encoder.patch_embeddings[i], encoder.block[i], encoder.layer_norm[i]]) for i in range(4)
            ]
        embeddings = getattr(model, "embeddings", None) or getattr(model, "embedder", None)
        stages = list(getattr(model.encoder, "stages", None) or getattr(model.encoder, "layers", []))
        if embeddings is None or len(stages) < 4:
            raise CicldError(f"cicld cannot tell the stages of a {self.family} backbone apart to freeze them")
        return [embeddings] + stages[-4:]


class SimplePyramid(nn.Module):
    """ViTDet's simple feature pyramid over four layers of a vision transformer (all at 1/16):
    two ×2 deconvolutions to 1/4 (width/4), one to 1/8 (width/2), as it is at 1/16, max-pooled to 1/32."""

    def __init__(self, width: int):
        super().__init__()
        self.channels = (width // 4, width // 2, width, width)
        self.to_4 = nn.Sequential(
            nn.ConvTranspose2d(width, width // 2, 2, stride=2),
            nn.GroupNorm(1, width // 2),
            nn.GELU(),
            nn.ConvTranspose2d(width // 2, width // 4, 2, stride=2),
        )
        self.to_8 = nn.ConvTranspose2d(width, width // 2, 2, stride=2)
        self.to_32 = nn.MaxPool2d(2)

    def forward(self, layers: list[torch.Tensor]) -> list[torch.Tensor]:
        first, second, third, fourth = layers
        return [self.to_4(first), self.to_8(second), third, self.to_32(fourth)]


# ---------------------------------------------------------------- configs and classes
def backbone_config(transformers_config) -> dict[str, Any]:
    """The transformers config of a backbone as cicld records it: the output stages set to the
    four cicld reads, what changes from machine to machine left out."""
    config = transformers_config
    family = config.model_type
    if family in VIT_FAMILIES:
        layers = config.num_hidden_layers
        if layers < 4 or layers % 4:
            raise CicldError(
                f"a {family} backbone needs a multiple of 4 layers to give four feature levels, it has {layers}"
            )
        config.out_features = [f"stage{layers // 4 * (i + 1)}" for i in range(4)]
        config.reshape_hidden_states = True
        config.apply_layernorm = True
    elif family != MIT_FAMILY:
        stages = [name for name in config.stage_names if name != "stem"]
        if len(stages) < 4:
            raise CicldError(f"a {family} backbone with {len(stages)} stages; cicld needs four (strides 4 to 32)")
        config.out_features = stages[-4:]
    data = config.to_dict()
    for key in _VOLATILE_KEYS:
        data.pop(key, None)
    return json.loads(json.dumps(data))  # as a model folder's config.json will hold it (string keys)


def _config_from_dict(data: dict[str, Any]):
    from transformers import AutoConfig

    data = dict(data)
    family = data.pop("model_type", None)
    try:
        return AutoConfig.for_model(family, **data)
    except (ValueError, TypeError, KeyError) as exc:
        raise CicldError(f"cannot build a {family!r} backbone from its recorded config: {exc}") from None


def _model_class(transformers_config) -> type[nn.Module]:
    """The transformers class that gives a family's feature maps."""
    if transformers_config.model_type == MIT_FAMILY:
        from transformers import SegformerModel

        return SegformerModel
    from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING

    try:
        return MODEL_FOR_BACKBONE_MAPPING[type(transformers_config)]
    except KeyError:
        raise CicldError(
            f"transformers has no backbone class for {transformers_config.model_type!r} models; cicld takes a "
            f"backbone of AutoBackbone (ConvNeXt, ResNet, Swin, DINOv2, ...) or a SegFormer (MiT) encoder"
        ) from None


# ---------------------------------------------------------------- loading pretrained weights
def load_backbone(source: str, what: str = "--backbone") -> tuple[PretrainedBackbone, BackboneRecord]:
    """The pretrained backbone at ``source`` (a local folder or a hub id) and its record.

    Every failure is one line naming ``source`` (after ``what``): nothing there, no weights, a
    damaged file, weights that do not fit the config, a hub id not in the cache while offline.
    """
    import transformers

    shown = f"{what} {source}"
    location = _location(source, shown)
    with _quiet(transformers):
        try:
            transformers_config = transformers.AutoConfig.from_pretrained(location)
        except (OSError, ValueError) as exc:
            raise CicldError(f"{shown}: {_why_not_found(source, exc)}") from None
        config = backbone_config(transformers_config)
        model_class = _model_class(transformers_config)
        try:
            model, info = model_class.from_pretrained(
                location,
                config=_config_from_dict(config),
                output_loading_info=True,
                ignore_mismatched_sizes=True,  # reported below, in one line
                weights_only=True,
                dtype=torch.float32,
            )
        except OSError as exc:
            raise CicldError(f"{shown}: {_why_not_found(source, exc)}") from None
        except Exception as exc:  # safetensors and torch raise their own kinds for a damaged file
            raise CicldError(f"{shown}: cannot read its weights ({type(exc).__name__}: {_first_line(exc)})") from None
    problems = _loading_problems(info, model)
    if problems:
        raise CicldError(f"{shown}: the weights do not fit its config: {'; '.join(problems)}")
    backbone = PretrainedBackbone(config, model.float().train())
    _check_strides(backbone, shown)
    record = BackboneRecord(config=config, source=location, sha256=state_hash(backbone.model))
    return backbone, record


def _check_strides(backbone: PretrainedBackbone, shown: str) -> None:
    """The four feature maps must be at 1/4, 1/8, 1/16 and 1/32 of the image, as E reads them."""
    side = 4 * FEATURE_STRIDES[-1]
    with torch.no_grad():
        sizes = [f.shape[-1] for f in backbone.eval()(torch.zeros(1, backbone.model.config.num_channels, side, side))]
    backbone.train()
    strides = [side // size if size else 0 for size in sizes]
    if strides != list(FEATURE_STRIDES):
        raise CicldError(
            f"{shown}: its four feature maps are at strides {strides}; cicld needs {list(FEATURE_STRIDES)}"
        )


def load_starting_backbone(config, what: str) -> PretrainedBackbone:
    """The pretrained backbone a model (its :class:`~cicld.models.CICLDConfig` ``config``) started
    from, loaded again from where it came from and checked to be the same weights (its hash)."""
    backbone, record = load_backbone(config.backbone_source, what)
    if record.sha256 != config.backbone_sha256 or record.config != config.backbone:
        raise CicldError(
            f"{what} {config.backbone_source}: these are not the weights the model started from (SHA-256 "
            f"{record.sha256[:12]}..., recorded {config.backbone_sha256[:12]}...); put those back"
        )
    return backbone


def _location(source: str, shown: str) -> str:
    """A local folder's absolute path, or the hub id as given. Something that can only be a path
    (absolute, ``./``, ``~``, two or more slashes) must exist."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CicldError(f"{shown} is a file; give the folder that save_pretrained wrote (config.json and weights)")
        if not (path / "config.json").is_file():
            raise CicldError(f"{shown} has no config.json: not a folder that transformers' save_pretrained wrote")
        return str(path.resolve())
    if path.is_absolute() or source.startswith((".", "~")) or source.count("/") != 1:
        raise CicldError(f"{shown}: no such folder (and not a hub id, which looks like organisation/name)")
    return source


def _why_not_found(source: str, exc: BaseException) -> str:
    text = _first_line(exc)
    if Path(source).expanduser().is_dir():
        if "no file named" in text or "does not appear to have" in text:
            return "the folder has a config.json but no weights (model.safetensors)"
        return text
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    if offline:
        return (
            "not in the hub cache, and HF_HUB_OFFLINE is set; download it where the hub can be reached "
            f"(`hf download {source}`) or give a local folder"
        )
    return f"not found on the hub nor in its cache ({text})"


@contextlib.contextmanager
def _quiet(transformers) -> Iterator[None]:
    """No loading report or progress bar from transformers: what matters is checked and said here."""
    logging = transformers.utils.logging
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        logging.enable_progress_bar()


def _loading_problems(info: dict, model: nn.Module) -> list[str]:
    """What transformers could not load, less what a checkpoint of another task may differ in."""
    prefix = f"{getattr(model, 'base_model_prefix', '')}."

    def bare(key: str) -> str:
        return key[len(prefix) :] if key.startswith(prefix) else key

    missing = sorted(k for k in info.get("missing_keys", ()) if not bare(k).startswith(ADDED_PREFIXES))
    unexpected = sorted(k for k in info.get("unexpected_keys", ()) if not bare(k).startswith(HEAD_PREFIXES))
    mismatched = sorted(str(m[0] if isinstance(m, (tuple, list)) else m) for m in info.get("mismatched_keys", ()))
    return key_problems(missing, unexpected, mismatched)


def state_hash(module: nn.Module) -> str:
    """SHA-256 of a module's weights: every tensor's name, dtype, shape and bytes, by name. The
    same weights give the same hash whatever file they were read from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."
