"""The CICLD architecture as one typed, JSON-serialisable dataclass.

Every number that changes a parameter shape or the inference path lives here, so that
``config.json`` next to ``model.safetensors`` is enough to rebuild the network exactly.
Four presets are built in (see ``docs/model.md`` for parameter counts and timings):

- ``tiny``: tests (well under 1 M parameters, 64×128 in milliseconds);
- ``small``: the toy recipe and the CPU demo (about 1.4 M parameters);
- ``base``: the default, paper scale (LDM-f8-like autoencoder with a 4-channel latent, a
  tens-of-millions-parameter latent UNet) but with a light full-resolution stem, so that
  1024×512 inference is no slower than a SegFormer-B5-sized peer;
- ``sd-vae``: the Stable-Diffusion VAE widths (128, 256, 512, 512), which a local copy of a
  public SD-VAE initialises through :meth:`cicld.models.CICLD.load_autoencoder_kl`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from cicld.data.labels import CITYSCAPES, NUM_CLASSES, ClassList
from cicld.errors import CicldError

DISCRIMINATOR_KINDS = ("3class", "2class")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
AE_NORMS = ("group", "batch")


@dataclass
class CICLDConfig:
    """Architecture, diffusion and inference settings of a :class:`~cicld.models.CICLD` model."""

    # Output
    num_classes: int = NUM_CLASSES
    # The classes it predicts (ClassList's JSON: names, colours, raw label values), so that predict
    # and evaluate need nothing but the model folder. None: Cityscapes' 19.
    classes: dict[str, Any] | None = None
    in_channels: int = 3

    # Pretrained backbone (``--backbone``, cicld/models/backbone.py): E's features come from a
    # transformers image model instead of E's own blocks. Its transformers config (so that the model
    # rebuilds with no network), where its weights came from (a hub id or a folder) and their
    # SHA-256 (backbone.state_hash). None: E is the autoencoder's own encoder.
    backbone: dict[str, Any] | None = None
    backbone_source: str | None = None
    backbone_sha256: str | None = None

    # Autoencoder E / D (diffusers AutoencoderKL layout: one DownEncoderBlock2D per width)
    latent_channels: int = 4
    ae_block_out_channels: tuple[int, ...] = (32, 64, 128, 256)
    # One resnet per block: a second one at full resolution (32 channels, the least efficient
    # convolutions of the network) was a quarter of the training step for features nothing reads.
    ae_layers_per_block: int = 1
    ae_norm_num_groups: int = 32
    ae_mid_block_attention: bool = False
    # Normalisation in E, D, the fusions and f_cls: "group" (diffusers' own, needed to load an
    # SD-VAE) or "batch" (learns faster and transfers better at CPU scale; per-process statistics).
    ae_norm: str = "group"
    # z0 = scaling_factor * posterior mean, as AutoencoderKL.config.scaling_factor in LDM/SD.
    scaling_factor: float = 1.0

    # Segmentation head f_cls: from D's 1/8 features to logits at 1/cls_stride (then upsampled),
    # adding the encoder's features of each scale on the way (inter-coder connection).
    cls_stride: int = 4
    cls_hidden_channels: int = 128
    cls_dropout: float = 0.1

    # Inter-coder connection (Table 1 ablation switch): fuse encoder features into the decoder.
    inter_coder: bool = True

    # ε_θ: a diffusers UNet2DModel on the latent
    unet_block_out_channels: tuple[int, ...] = (128, 256, 256, 256)
    unet_down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    unet_up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D")
    unet_layers_per_block: int = 2
    unet_attention_head_dim: int = 64
    unet_norm_num_groups: int = 32

    # Conditioning (Eq. 5 at the UNet mid-block; Table 1 ablation switch) and f_mask
    conditioning: bool = True
    mask_encoder_channels: tuple[int, ...] = (32, 64, 128, 256)
    mask_encoder_pool: int = 4
    condition_dropout: float = 0.3

    # Diffusion (diffusers DDPMScheduler for training noise, DDIMScheduler for inference)
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    t_star: float = 0.2
    inference_steps: int = 1

    # f_dis (Eq. 8): conv encoder over ẑ0 -> FC hidden -> FC 3 (or 2)
    discriminator: str = "3class"
    discriminator_channels: tuple[int, ...] = (64, 128, 256, 512)
    discriminator_hidden: int = 1024

    # Inference settings: how `cicld predict`/`evaluate` run this model (flags override them).
    # Training writes them at export, so a model folder alone says how to run it wherever it lies.
    # (width, height) the images are resized to (predict keeps the aspect ratio at this height);
    # None: images as they are. The default is the real-data recipe's target size, which is also
    # what a model folder exported before these settings existed gets.
    input_size: tuple[int, int] | None = (1024, 512)
    # Per-channel mean and std of the ImageNet normalisation the model was trained with.
    image_mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    image_std: tuple[float, ...] = (0.229, 0.224, 0.225)
    # Sliding-window inference: window and overlap as (width, height).
    sliding_window: tuple[int, int] = (512, 512)
    sliding_overlap: tuple[int, int] = (128, 128)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ derived values
    @property
    def vae_scale_factor(self) -> int:
        """Image pixels per latent pixel along one side (8 for four autoencoder blocks)."""
        return 2 ** (len(self.ae_block_out_channels) - 1)

    @property
    def size_divisor(self) -> int:
        """Image sides must be multiples of this for the autoencoder *and* the UNet to tile evenly
        (and for a backbone's 1/32 features)."""
        divisor = self.vae_scale_factor * 2 ** (len(self.unet_block_out_channels) - 1)
        return math.lcm(divisor, 32) if self.backbone is not None else divisor

    @property
    def t_star_step(self) -> int:
        """The partial-noise start t* as a number of training timesteps (training draws t < t*)."""
        return max(1, min(self.num_train_timesteps, round(self.t_star * self.num_train_timesteps)))

    @property
    def class_list(self) -> ClassList:
        """The classes the model predicts, one per output (:attr:`classes`; None: Cityscapes')."""
        return CITYSCAPES if self.classes is None else ClassList.from_dict(self.classes)

    @property
    def num_domains(self) -> int:
        return 3 if self.discriminator == "3class" else 2

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        def fail(message: str) -> None:
            raise CicldError(f"invalid model config: {message}")

        if self.num_classes < 1:
            fail(f"num_classes must be positive, got {self.num_classes}")
        try:
            classes = self.class_list
        except CicldError as exc:
            fail(f"classes: {exc}")
        if len(classes) != self.num_classes:
            listed = "is unset (Cityscapes' 19 classes)" if self.classes is None else f"lists {len(classes)}"
            fail(f"num_classes is {self.num_classes} but classes {listed}")
        if self.backbone is not None:
            if not isinstance(self.backbone.get("model_type"), str):
                fail("backbone must be a transformers config with a model_type")
            if not (isinstance(self.backbone_source, str) and isinstance(self.backbone_sha256, str)):
                fail("a backbone needs its backbone_source and backbone_sha256")
            if len(self.ae_block_out_channels) != 4:
                fail(
                    "a backbone gives a latent at 1/8: ae_block_out_channels needs 4 widths, got "
                    f"{len(self.ae_block_out_channels)}"
                )
        if len(self.ae_block_out_channels) < 2:
            fail("ae_block_out_channels needs at least two widths")
        for name, widths, groups in (
            ("ae_block_out_channels", self.ae_block_out_channels, self.ae_norm_num_groups),
            ("unet_block_out_channels", self.unet_block_out_channels, self.unet_norm_num_groups),
        ):
            bad = [w for w in widths if w % groups]
            if bad:
                fail(f"{name} {tuple(widths)} must be multiples of their norm groups ({groups}); {bad} are not")
        if not (len(self.unet_block_out_channels) == len(self.unet_down_block_types) == len(self.unet_up_block_types)):
            fail("unet_block_out_channels, unet_down_block_types and unet_up_block_types need the same length")
        if self.cls_stride < 1 or self.cls_stride & (self.cls_stride - 1) or self.cls_stride > self.vae_scale_factor:
            fail(f"cls_stride must be a power of two between 1 and {self.vae_scale_factor}, got {self.cls_stride}")
        if self.discriminator not in DISCRIMINATOR_KINDS:
            fail(f"discriminator must be one of {DISCRIMINATOR_KINDS}, got {self.discriminator!r}")
        if self.ae_norm not in AE_NORMS:
            fail(f"ae_norm must be one of {AE_NORMS}, got {self.ae_norm!r}")
        if self.beta_schedule not in BETA_SCHEDULES:
            fail(f"beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}")
        if not 0.0 < self.t_star <= 1.0:
            fail(f"t_star is a fraction of the training timesteps in (0, 1], got {self.t_star}")
        if not 0.0 <= self.condition_dropout <= 1.0:
            fail(f"condition_dropout is a probability, got {self.condition_dropout}")
        if not 0 <= self.inference_steps <= self.t_star_step:
            fail(f"inference_steps must be between 0 and t* = {self.t_star_step} timesteps, got {self.inference_steps}")
        if self.mask_encoder_pool < 1 or not self.mask_encoder_channels:
            fail("mask_encoder_pool must be >= 1 and mask_encoder_channels non-empty")
        if self.scaling_factor <= 0 or not math.isfinite(self.scaling_factor):
            fail(f"scaling_factor must be a positive number, got {self.scaling_factor}")
        if self.input_size is not None and (len(self.input_size) != 2 or min(self.input_size) < 1):
            fail(f"input_size must be (width, height) of positive numbers or None, got {self.input_size}")
        for name in ("image_mean", "image_std"):
            values = getattr(self, name)
            if len(values) != self.in_channels or not all(math.isfinite(v) for v in values):
                fail(f"{name} needs {self.in_channels} finite numbers, got {values}")
        if min(self.image_std) <= 0:
            fail(f"image_std must be positive, got {self.image_std}")
        window, overlap = self.sliding_window, self.sliding_overlap
        if len(window) != 2 or min(window) < 1 or any(w % self.size_divisor for w in window):
            fail(f"sliding_window must be (width, height), positive multiples of {self.size_divisor}, got {window}")
        if len(overlap) != 2 or any(o % self.vae_scale_factor or not 0 <= o < w for o, w in zip(overlap, window)):
            fail(f"sliding_overlap must be multiples of {self.vae_scale_factor} smaller than the window, got {overlap}")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else copy.deepcopy(v)
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CICLDConfig:
        if not isinstance(data, dict):
            raise CicldError(f"a model config must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise CicldError(f"unknown model config keys: {', '.join(unknown[:5])}")
        hints = typing.get_type_hints(cls)
        # Each value is checked against its field's type before validate() compares it with
        # anything: a string where a number belongs must be a one-line error naming the key.
        return cls(**{key: typed_config_value(key, value, hints[key]) for key, value in data.items()})

    def replace(self, **changes: Any) -> CICLDConfig:
        """A copy with some fields changed (validated like a new config)."""
        return self.from_dict({**self.to_dict(), **changes})

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset_names(cls) -> tuple[str, ...]:
        return tuple(_PRESETS)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> CICLDConfig:
        if name not in _PRESETS:
            raise CicldError(f"unknown model preset {name!r}; choose one of {', '.join(_PRESETS)}")
        return cls.from_dict({**cls().to_dict(), **_PRESETS[name], **overrides})


def typed_config_value(key: str, value: Any, hint: Any, what: str = "model config") -> Any:
    """``value`` read from a JSON config as the field type ``hint`` (lists become tuples); a
    one-line CicldError naming ``key`` if it is not of that type. Integers count as floats;
    booleans count as neither."""
    converted = _as_type(value, hint)
    if converted is _WRONG:
        raise CicldError(f"invalid {what}: {key} must be {_type_name(hint)}, got {value!r}")
    return converted


_WRONG = object()


def _as_type(value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            if (converted := _as_type(value, option)) is not _WRONG:
                return converted
        return _WRONG
    if hint is type(None):
        return None if value is None else _WRONG
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return _WRONG
        kinds = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(kinds) != len(value):
            return _WRONG
        items = tuple(_as_type(v, k) for v, k in zip(value, kinds))
        return _WRONG if any(i is _WRONG for i in items) else items
    if origin is dict:  # a JSON object with string keys (a backbone's transformers config)
        return copy.deepcopy(value) if isinstance(value, dict) and all(isinstance(k, str) for k in value) else _WRONG
    if hint is bool:
        return value if isinstance(value, bool) else _WRONG
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _WRONG
    if hint is float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _WRONG
    if hint is str:
        return value if isinstance(value, str) else _WRONG
    return value  # a type this config does not use: left to validate()


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if hint is type(None):
        return "null"
    if origin is dict:
        return "a JSON object"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            plural = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
            return f"a list of {plural.get(args[0], _type_name(args[0]))}"
        return f"a list of {len(args)} items ({', '.join(_type_name(a) for a in args)})"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


_TINY_UNET: dict[str, Any] = {
    "unet_block_out_channels": (32, 64),
    "unet_down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
    "unet_up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
    "unet_layers_per_block": 1,
    "unet_attention_head_dim": 16,
    "unet_norm_num_groups": 8,
}

_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "ae_block_out_channels": (8, 16, 16, 32),
        "ae_layers_per_block": 1,
        "ae_norm_num_groups": 8,
        "cls_hidden_channels": 32,
        **_TINY_UNET,
        "mask_encoder_channels": (8, 16, 32),
        "discriminator_channels": (8, 16, 32),
        "discriminator_hidden": 64,
    },
    # The toy recipe's model: tiny's ε_θ, f_mask and f_dis, with the width at 1/4-1/8 where the
    # toy scenes' information is, and an f_cls wide enough for 19 classes.
    "small": {
        "ae_block_out_channels": (8, 16, 32, 64),
        "ae_layers_per_block": 1,
        "ae_norm_num_groups": 8,
        "ae_norm": "batch",
        "cls_hidden_channels": 64,
        **_TINY_UNET,
        "mask_encoder_channels": (8, 16, 32),
        "discriminator_channels": (8, 16, 32),
        "discriminator_hidden": 64,
    },
    # The dataclass defaults are the base preset; listed for clarity.
    "base": {},
    "sd-vae": {
        "ae_block_out_channels": (128, 256, 512, 512),
        "ae_layers_per_block": 2,
        "ae_norm_num_groups": 32,
        "ae_mid_block_attention": True,
        "scaling_factor": 0.18215,
        "cls_hidden_channels": 256,
    },
}
