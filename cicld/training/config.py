"""Training configurations: one dataclass per stage, saved as ``config.json`` in every run.

Defaults are the DAFormer/HRDA/MIC recipe for real data (DESIGN §2), the ``default`` recipe.
:func:`toy_recipe` gives the CPU-sized settings for the built-in toy pair, the ``toy`` recipe
(``--source toy`` picks it); the run's config records which recipe it came from. Every field can
be overridden from the command line; ``docs/configuration.md`` lists them all (a test keeps it in
sync with these classes).

A config is resolved once, by :func:`make_config` (dataclass defaults, then the recipe, then a
saved config given with ``--config``, then the flags given), before anything is built from it, and
is read-only from then on (frozen dataclasses; a later value is a new config).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cicld.data.datasets import DEFAULT_CROP, DEFAULT_RESIZE
from cicld.data.labels import ClassList
from cicld.errors import CicldError, with_article
from cicld.models.config import CICLDConfig, typed_config_value
from cicld.sizes import check_size
from cicld.training.runs import RUN_CONFIG, read_json

SOURCES = ("gta5", "synthia", "toy", "pairs")
#: The default of --source-resize/--target-resize: the dataset's usual size (DEFAULT_RESIZE).
PER_DATASET = "dataset"
METHODS = ("cicld", "self-training", "source-only", "oracle")
ADVERSARIAL = ("3class", "2class", "none")
MIXED_PRECISION = ("no", "fp16", "bf16")
#: Where the unset options of a new config come from: the real-data recipe or the toy pair's.
RECIPES = ("default", "toy")
#: Accelerate's experiment trackers (``Accelerator(log_with=...)``), as diffusers' ``--report_to``.
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive")
REPORT_TO = ("none", "all", *TRACKERS)
#: Where --feature-distance counts: DAFormer's thing classes, or every labelled pixel.
FEATURE_DISTANCE_CLASSES = ("auto", "things", "all")
#: The real-data default of ``--backbone`` (docs/gpu-training.md, "A pretrained backbone"): chosen for
#: its accuracy for its cost, with default inference at 1024x512 within the SegFormer-B5-sized
#: peer's time (benchmarks/speed.py); Apache-2.0 weights. The toy recipe trains without one.
DEFAULT_BACKBONE = "facebook/dinov2-base"


def _help(
    text: str,
    default: Any = dataclasses.MISSING,
    *,
    low: float | None = None,
    high: float | None = None,
    positive: bool = False,
) -> Any:
    """A config field with its help text and, for numbers, its valid range (``low`` ≤ value ≤ ``high``,
    value > 0 where ``positive``), checked by :func:`check_ranges`."""
    metadata = {"help": text, "low": low, "high": high, "positive": positive}
    if default is dataclasses.MISSING:
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


def check_ranges(config: Any) -> None:
    """Every number of ``config`` finite and in its field's range, or a one-line error naming the flag.

    A NaN or infinite setting (``--lr inf``) would otherwise train a model of NaN weights to the end.
    """
    for spec in dataclasses.fields(config):
        value, meta, flag = getattr(config, spec.name), spec.metadata, "--" + spec.name.replace("_", "-")
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            raise CicldError(f"{flag} must be a finite number, got {value}")
        if meta.get("positive") and value <= 0:
            raise CicldError(f"{flag} must be positive, got {value}")
        low, high = meta.get("low"), meta.get("high")
        if low is not None and high is not None and not low <= value <= high:
            raise CicldError(f"{flag} must be between {low} and {high}, got {value}")
        if low is not None and value < low:
            raise CicldError(f"{flag} must be at least {low}, got {value}")


@dataclass(frozen=True)
class CommonConfig:
    """Settings every training stage shares."""

    recipe: str | None = _help(
        "the settings every option you leave unset starts from: default (the real-data recipe) or toy (CPU-sized, "
        "for the toy pair) [default: toy for --source toy, else default]",
        None,
    )
    source: str = _help(
        "labelled source domain: gta5, synthia, toy (the built-in toy pair) or pairs (your own images/ and labels/, "
        "prepared with `cicld prepare-data pairs`)",
        "gta5",
    )
    source_root: str | None = _help("source dataset folder [default: data/<source>, toy: data/toy/gta5]", None)
    target_root: str | None = _help(
        "target folder: Cityscapes' layout, a pairs folder, or any folder of images (searched in every subfolder; no "
        "labels needed) [default: data/cityscapes, toy: data/toy/cityscapes]",
        None,
    )
    # The class list itself (ClassList's JSON), read from the file --classes names, so that a run's
    # config.json holds its classes. None: the labelled data's own.
    classes: dict[str, Any] | None = _help(
        "class list file (JSON: each class's name, colour and raw label values; docs/own-data.md): the labelled data's "
        "classes by name, in order, with the colours and values the model is to use; recorded in the run and its model "
        "[default: the labelled data's own: Cityscapes' 19 classes, or the list a pairs folder was prepared with]",
        None,
    )
    steps: int = _help("optimizer steps", 40000, low=1)
    batch_size: int = _help("images per domain per process and step", 2, low=1)
    crop: tuple[int, int] | None = _help("random crop (width, height); None trains on whole images", DEFAULT_CROP)
    # "dataset": the dataset's usual size (DEFAULT_RESIZE; the toy pair as it is); None: no resizing.
    source_resize: tuple[int, int] | str | None = _help(
        "resize source images to (width, height) before cropping; none keeps them as they are [default: per dataset]",
        PER_DATASET,
    )
    target_resize: tuple[int, int] | str | None = _help(
        "resize target images to (width, height), each whatever its own size and aspect ratio; none keeps them as "
        "they are [default: 1024x512]",
        PER_DATASET,
    )
    num_workers: int = _help("data-loading worker processes per training process", 4, low=0)
    rare_class_sampling: bool = _help("draw source frames by rare-class sampling (DAFormer RCS, T=0.01)", False)
    zoom_max: float = _help(
        "zoom each labelled training frame in by a random factor in [1, this] after the resize and cut the crop "
        "(whole images: the unzoomed size) back out, so objects look up to this much larger; 1: no zoom",
        1.0,
        low=1,
    )
    rcs_min_pixels: int = _help("RCS: a frame counts for a class with at least this many pixels of it", 3000, low=0)
    lr: float = _help("AdamW learning rate of the pre-trained parts", 6e-5, positive=True)
    head_lr_mult: float = _help(
        "learning-rate multiplier for freshly initialised heads (f_cls, f_mask, f_dis)", 10.0, positive=True
    )
    weight_decay: float = _help("AdamW weight decay", 0.01, low=0)
    decay_norms: bool = _help(
        "apply --weight-decay to the normalisation layers' weights and biases too (DAFormer: no)", False
    )
    warmup_steps: int = _help("linear learning-rate warm-up steps, then polynomial decay", 1500, low=0)
    poly_power: float = _help("power of the polynomial learning-rate decay", 1.0, low=0)
    grad_accum_steps: int = _help("micro-batches accumulated per optimizer step", 1, low=1)
    max_grad_norm: float | None = _help("clip the gradient norm to this (None: no clipping)", None, positive=True)
    mixed_precision: str = _help("no, fp16 (GPU) or bf16", "no")
    # At most 2**32 - 1, the seeds numpy takes: every generator the run seeds from it can then take its seed.
    seed: int = _help(
        "random seed, 0 to 4294967295 (2^32 - 1): data order, augmentation, noise and initialisation",
        0,
        low=0,
        high=2**32 - 1,
    )
    checkpoint_every: int = _help("save a resumable checkpoint every N steps", 2000, low=1)
    keep_checkpoints: int = _help(
        "how many newest checkpoints to keep, at least 1 (the newest is what --resume continues)", 2, low=1
    )
    log_every: int = _help("write a log row (log.csv and the --report-to trackers) every N steps", 50, low=1)
    val_every: int = _help("validate on the target val split every N steps (0: only at the end)", 4000, low=0)
    val_limit: int | None = _help("validate on at most this many val images, at least 1 (None: all)", None, low=1)
    report_to: str = _help(
        f"also log to an Accelerate tracker: {', '.join(TRACKERS[:-1])} or {TRACKERS[-1]} (each installed separately), "
        "all (every one installed) or none; log.csv is always written",
        "none",
    )
    runs_root: str = _help("folder of all runs", "runs")

    def validate(self) -> None:
        def fail(message: str) -> None:
            raise CicldError(message)

        if self.recipe not in RECIPES:
            fail(f"--recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        if self.source not in SOURCES:
            fail(f"--source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.report_to not in REPORT_TO:
            fail(f"--report-to must be one of {', '.join(REPORT_TO)}, got {self.report_to!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            fail(f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}")
        for name in ("crop", "source_resize", "target_resize"):
            value = getattr(self, name)
            if isinstance(value, tuple):  # however it came: a flag, a --config file, a run's config.json
                check_size(value, "--" + name.replace("_", "-"))
            elif name != "crop" and isinstance(value, str) and value != PER_DATASET:
                fail(f"{name} must be (width, height), {PER_DATASET!r} or None, got {value!r}")
        if self.classes is not None:
            try:
                ClassList.from_dict(self.classes)
            except CicldError as exc:
                fail(f"classes: {exc}")
        check_ranges(self)

    # ---------------------------------------------------------------- derived
    @property
    def source_format(self) -> str:
        """The on-disk format of the source (the toy source is written in GTA5's format)."""
        return "gta5" if self.source == "toy" else self.source

    @property
    def resolved_source_root(self) -> Path:
        if self.source_root is not None:
            return Path(self.source_root)
        return Path("data/toy/gta5") if self.source == "toy" else Path("data") / self.source

    @property
    def resolved_target_root(self) -> Path:
        if self.target_root is not None:
            return Path(self.target_root)
        return Path("data/toy/cityscapes") if self.source == "toy" else Path("data/cityscapes")

    @property
    def resolved_source_resize(self) -> tuple[int, int] | None:
        if self.source_resize != PER_DATASET:
            return self.source_resize  # a size, or None: `--source-resize none`
        return None if self.source == "toy" else DEFAULT_RESIZE[self.source_format]

    @property
    def resolved_target_resize(self) -> tuple[int, int] | None:
        if self.target_resize != PER_DATASET:
            return self.target_resize  # a size, or None: `--target-resize none`
        return None if self.source == "toy" else DEFAULT_RESIZE["cityscapes"]

    #: Keys that runs saved by earlier versions may hold although this stage no longer has them
    #: (dropped on loading, so that those runs still resume and evaluate).
    retired = ()
    #: Keys added since runs were first saved, with the value that runs saved without them had in
    #: effect (such a run loads with that value, not with today's default).
    # Runs saved before --decay-norms decayed their norm layers.
    introduced: typing.ClassVar[dict[str, Any]] = {"decay_norms": True}

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """A saved config (a run's ``config.json``) as it was saved; one saved before runs recorded
        their recipe gets the one it was made with (``toy`` for the toy pair), and one saved before
        a key was :attr:`introduced` the value it ran with."""
        values = cls.typed_values(data)
        return cls(**{"recipe": default_recipe(values.get("source", cls.source)), **cls.introduced, **values})

    @classmethod
    def typed_values(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The settings a saved config holds, typed as the fields (lists become tuples); a
        one-line error for a key this stage does not have or a value of the wrong type."""
        data = {k: v for k, v in data.items() if k != "stage" and k not in cls.retired}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise CicldError(f"unknown {cls.stage} config keys: {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        return {key: typed_config_value(key, value, hints[key], f"{cls.stage} config") for key, value in data.items()}


@dataclass(frozen=True)
class AutoencoderConfig(CommonConfig):
    """``pretrain-ae``: the latent autoencoder on source and target images (paper §3.5, stage 1)."""

    stage = "pretrain-ae"
    # It builds a new model from --preset: no --init-from (saved, always null, by runs before the flag went).
    retired = ("init_from",)
    # Runs saved before --backbone built E from its own blocks.
    introduced: typing.ClassVar[dict[str, Any]] = {**CommonConfig.introduced, "backbone": "none"}
    preset: str = _help(f"model preset ({', '.join(CICLDConfig.preset_names())}) of the new model", "base")
    backbone: str = _help(
        "pretrained image model for E's features: a local folder as transformers' save_pretrained writes it, or a "
        "hub id (transformers' download and cache; HF_HUB_OFFLINE=1 respected); none: E's own blocks, from random "
        "weights. The later stages inherit it; this stage keeps its weights frozen",
        DEFAULT_BACKBONE,
    )
    # Half of each batch comes from the source, half from the target (at least one image of each).
    batch_size: int = _help("images per process and step, half source and half target (at least one of each)", 2, low=1)
    l1_weight: float = _help("weight of the L1 reconstruction loss", 1.0, low=0)
    kl_weight: float = _help("weight of the KL term of the latent posterior", 1e-6, low=0)
    gan_weight: float = _help("weight of the patch-GAN loss once it starts", 0.5, low=0)
    gan_start: int = _help("step at which the patch-GAN loss starts (warm-up on reconstruction only)", 20000, low=0)
    perceptual_weights: str | None = _help(
        "local VGG16 safetensors file for the perceptual loss (None: no perceptual loss)", None
    )
    perceptual_weight: float = _help("weight of the perceptual loss", 1.0, low=0)
    init_autoencoder: str | None = _help(
        "local diffusers AutoencoderKL folder to initialise E/D from (e.g. an SD-VAE copy)", None
    )

    def validate(self) -> None:
        super().validate()
        if not self.backbone.strip():
            raise CicldError("--backbone must name a folder or a hub id, or be none")
        if self.backbone != "none" and self.init_autoencoder is not None:
            raise CicldError(
                f"--init-autoencoder initialises E's own blocks, which the backbone {self.backbone} replaces; "
                "add --backbone none to start E from the autoencoder"
            )


@dataclass(frozen=True)
class SegmentationStageConfig(CommonConfig):
    """What the two segmentation stages share: the paper's Table 1 switches.

    They have no ``--preset``: they load the previous stage's model, whose architecture it is.
    """

    retired = ("preset",)  # saved (and ignored) by runs before the flag was removed here

    init_from: str | None = _help(
        "model folder or run to start from [default: the newest finished previous stage]", None
    )
    val_root: str | None = _help(
        "labelled target frames to validate on: a prepared pairs folder (or a Cityscapes folder's val split) "
        "[default: the target's val split where it is in Cityscapes' layout, else none: no validation]",
        None,
    )
    inter_coder: bool | None = _help(
        "inter-coder connection on/off (Table 1); a change starts the fusions afresh [default: as the starting model]",
        None,
    )
    conditioning: bool | None = _help(
        "label conditioning (f_mask, Eq. 5) on/off (Table 1); a change starts f_mask afresh [default: as the "
        "starting model]",
        None,
    )

    class_weights: bool = _help(
        "weight the cross-entropy by √(median frequency / class frequency) of the labelled data (clipped to 5)", False
    )
    backbone_lr_mult: float = _help(
        "learning-rate multiplier of the pretrained backbone (a model with one)", 1.0, positive=True
    )
    freeze_backbone_stages: int = _help(
        "keep the pretrained backbone's stem and first N of its 4 stages frozen (0: train it all)", 0, low=0, high=4
    )
    feature_distance: float = _help(
        "weight of the feature distance (DAFormer's FD) between the backbone's deepest features on the labelled images "
        "and those of the pretrained backbone it started from (a frozen copy, loaded from where it came from); 0: off",
        0.005,
        low=0,
    )
    feature_distance_classes: str = _help(
        "where the feature distance counts: things (DAFormer's: pixels of Cityscapes' 10 thing classes), all (every "
        "labelled pixel) or auto (things with Cityscapes' classes, all with your own)",
        "auto",
    )

    def validate(self) -> None:
        super().validate()
        if self.feature_distance_classes not in FEATURE_DISTANCE_CLASSES:
            raise CicldError(
                f"--feature-distance-classes must be one of {', '.join(FEATURE_DISTANCE_CLASSES)}, got "
                f"{self.feature_distance_classes!r}"
            )

    @property
    def architecture_switches(self) -> dict[str, bool]:
        """The switches given, to apply to the starting model."""
        return {k: v for k in ("inter_coder", "conditioning") if (v := getattr(self, k)) is not None}


@dataclass(frozen=True)
class LatentDiffusionConfig(SegmentationStageConfig):
    """``pretrain-ldm``: ε_θ, D, f_cls and f_mask on the source, from the autoencoder (stage 2)."""

    stage = "pretrain-ldm"
    lambda_dif: float = _help("weight of the diffusion loss ‖ε − ε_θ‖²", 1.0, low=0)
    train_encoder: bool = _help("also train E with the segmentation loss (the paper keeps it fixed here)", False)


@dataclass(frozen=True)
class AdaptConfig(SegmentationStageConfig):
    """``adapt``: the UDA loop (EMA pseudo-labels, ClassMix, 3-class adversarial alignment)."""

    stage = "adapt"
    method: str = _help(
        "cicld (UDA); self-training (the no-diffusion baseline: the same network and loop without ε_θ, "
        "S = 0, DACS/DAFormer-style); source-only (no target data); oracle (trained on the target's own labels, "
        "wherever it has them: a reference, not adaptation)",
        "cicld",
    )
    adversarial: str = _help("adversarial loss on ẑ0: 3class (the paper's), 2class (ADDA-style) or none", "3class")
    contrastive: bool = _help("add the contrastive (CL) loss between source and mixed features (Table 2)", False)
    mmd: bool = _help("add the MMD loss between source and target latents (Table 2)", False)
    lambda_dif: float = _help("weight of the diffusion loss", 1.0, low=0)
    lambda_adv: float = _help("weight of the adversarial (confusion) loss for E and ε_θ", 0.01, low=0)
    lambda_dis: float = _help("weight of the discriminator's own loss", 1.0, low=0)
    lambda_cl: float = _help("weight of the contrastive loss", 0.1, low=0)
    lambda_mmd: float = _help("weight of the MMD loss", 0.1, low=0)
    ema_alpha: float = _help(
        "EMA: ema_model = α·ema_model + (1 − α)·model, α = min(1 − 1/(t+1), this)", 0.999, low=0, high=1
    )
    pseudo_threshold: float = _help(
        "pseudo-label confidence threshold for the mixed-image weight", 0.968, low=0, high=1
    )
    pseudo_ignore_top: int = _help("target rows from the top whose pseudo-labels get weight 0", 15, low=0)
    pseudo_ignore_bottom: int = _help(
        "target rows from the bottom whose pseudo-labels get weight 0 (ego vehicle)", 120, low=0
    )
    mix_jitter_p: float = _help("probability of colour jitter on a mixed image", 0.8, low=0, high=1)
    mix_blur_p: float = _help("probability of Gaussian blur on a mixed image", 0.5, low=0, high=1)

    def validate(self) -> None:
        super().validate()
        if self.method not in METHODS:
            raise CicldError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.adversarial not in ADVERSARIAL:
            raise CicldError(f"--adversarial must be one of {', '.join(ADVERSARIAL)}, got {self.adversarial!r}")


STAGE_CONFIGS = {c.stage: c for c in (AutoencoderConfig, LatentDiffusionConfig, AdaptConfig)}


def toy_recipe(stage: str) -> dict[str, Any]:
    """CPU-sized defaults for the toy pair (256×128 images, the ``small`` model).

    Whole images rather than crops and class-weighted cross-entropy: on the toy pair these two
    are worth about 8 mIoU each (``benchmarks/learning_ladder.py``, docs/benchmarks.md). Images
    as they are (no resizing), also where ``--source synthia`` reads a toy pair written in SYNTHIA's
    format, whose dataset size (1280×760) would upsample 256×128 frames fivefold. A pretrained
    backbone (``--backbone``) at a tenth of the recipe's high learning rate, and no feature
    distance: on the toy pair it did not help (docs/benchmarks-archive.md, ninth round).
    """
    common = dict(
        preset="small",
        source_resize=None,
        target_resize=None,
        batch_size=4,
        crop=None,
        num_workers=0,
        lr=2e-3,
        head_lr_mult=1.0,
        warmup_steps=50,
        checkpoint_every=100,
        log_every=10,
        val_every=0,
        rcs_min_pixels=50,
        backbone_lr_mult=0.1,
        feature_distance=0.0,
    )
    per_stage = {
        # 64×64 crops: the autoencoder learns local appearance, at an eighth of a whole image's cost.
        # No pretrained backbone: the toy's stand-in is benchmarks/toy_backbone.py's, which a CPU
        # trains in 20 minutes (docs/benchmarks-archive.md, ninth round).
        "pretrain-ae": dict(steps=100, batch_size=8, crop=(64, 64), gan_start=50, kl_weight=1e-6, backbone="none"),
        "pretrain-ldm": dict(steps=500, train_encoder=True, class_weights=True),
        "adapt": dict(
            steps=500, class_weights=True, ema_alpha=0.99, pseudo_ignore_top=0, pseudo_ignore_bottom=16, lambda_adv=0.01
        ),
    }
    return {**common, **per_stage[stage]}


def default_recipe(source: str) -> str:
    """The recipe a new config of ``source`` starts from unless one is named."""
    return "toy" if source == "toy" else "default"


def recipe_settings(recipe: str, stage: str) -> dict[str, Any]:
    """What ``recipe`` sets for ``stage`` over the dataclass defaults (the default recipe: nothing;
    a name that is no recipe is refused by ``validate``)."""
    return toy_recipe(stage) if recipe == "toy" else {}


def make_config(stage: str, **values: Any) -> CommonConfig:
    """The stage's config: dataclass defaults, then its recipe, then ``values``; validated.

    The recipe is ``values["recipe"]``, or ``toy`` for ``source == "toy"`` and ``default`` otherwise,
    and is recorded in the config. Every value given wins, None included: ``crop=None`` means whole
    images even where the recipe crops. Leave a field out to keep its recipe's value.
    """
    cls = STAGE_CONFIGS[stage]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise CicldError(f"{stage} has no option {', '.join('--' + k.replace('_', '-') for k in unknown)}")
    recipe = values.get("recipe") or default_recipe(values.get("source", cls.source))
    settings = {k: v for k, v in recipe_settings(recipe, stage).items() if k in names}
    config = cls(**{**settings, **values, "recipe": recipe})
    config.validate()
    return config


def read_config_file(path: Path, stage: str) -> dict[str, Any]:
    """The settings of a saved run config (``--config``: a run's ``config.json``) for ``stage``,
    typed; a one-line error for a file that is unreadable, not JSON, not a config of ``stage``, or
    holds a key or value that ``stage`` does not take."""
    try:
        if Path(path).is_dir():
            run_config = Path(path) / RUN_CONFIG
            hint = f"`--config {run_config}`" if run_config.is_file() else f"a run's <run>/{RUN_CONFIG}"
            raise CicldError(f"{path} is a folder; give the config file itself: {hint}")
        data = read_json(path)
        if not isinstance(data, dict) or "stage" not in data:
            raise CicldError(
                f"{path} is not a training run's config (it has no \"stage\"; a run's is <run>/{RUN_CONFIG})"
            )
        if data["stage"] != stage:
            other = data["stage"]
            raise CicldError(
                f"{path} is {with_article(str(other))} config, not {stage}'s; use `cicld {other} --config {path}`"
            )
        return STAGE_CONFIGS[stage].typed_values(data)
    except CicldError as exc:
        raise CicldError(f"--config: {exc}") from None
