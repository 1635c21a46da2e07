"""Initialising E and D from a diffusers AutoencoderKL (e.g. a local copy of Stable Diffusion's VAE).

Its encoder and decoder map onto E and D key for key; f_cls and the inter-coder fusions, which
an AutoencoderKL has not, keep their initialisation. Everything that does not match is one line.
"""

from __future__ import annotations

import os
from pathlib import Path

from cicld.errors import CicldError
from cicld.models.state import check_state_dict, load_state_dict_strict


def load_autoencoder_kl(model, path: str | os.PathLike) -> None:
    """Initialise ``model``'s E and D (not f_cls, not the fusions) from a local diffusers
    AutoencoderKL directory.

    The autoencoder must have the model's widths, depth, latent channels and mid-block attention;
    its ``scaling_factor`` replaces ``model.config.scaling_factor`` (it defines z0's scale).
    """
    from diffusers import AutoencoderKL

    if model.config.backbone is not None:
        raise CicldError(
            "this model's encoder is a pretrained backbone (--backbone): an AutoencoderKL cannot initialise it"
        )
    if model.config.ae_norm != "group":
        raise CicldError(f"an AutoencoderKL uses GroupNorm; this model has ae_norm {model.config.ae_norm!r}")
    path = Path(path)
    if not path.is_dir():
        raise CicldError(f"autoencoder directory not found: {path}")
    try:
        autoencoder = AutoencoderKL.from_pretrained(str(path))
    except (OSError, ValueError) as error:
        raise CicldError(f"cannot load a diffusers AutoencoderKL from {path}: {error}") from None
    ae_config = autoencoder.config
    expected = {
        "block_out_channels": tuple(model.config.ae_block_out_channels),
        "layers_per_block": model.config.ae_layers_per_block,
        "latent_channels": model.config.latent_channels,
        "norm_num_groups": model.config.ae_norm_num_groups,
        "in_channels": model.config.in_channels,
        "mid_block_add_attention": model.config.ae_mid_block_attention,
    }
    lacking = [key for key in expected if key not in ae_config]
    if lacking:  # never guess a value: a guess could pass the check below for the wrong network
        raise CicldError(
            f"the AutoencoderKL config in {path} lacks {', '.join(lacking)}; cannot check that it matches this model"
        )
    found = {key: tuple(v) if isinstance(v := ae_config[key], list) else v for key in expected}
    differing = [f"{key} {found[key]} (model has {value})" for key, value in expected.items() if found[key] != value]
    if differing:
        raise CicldError(f"the AutoencoderKL in {path} does not match this model: {'; '.join(differing)}")
    encoder_state, decoder_state, unmapped = {}, {}, []
    for key, value in autoencoder.state_dict().items():
        if key.startswith("encoder."):
            encoder_state[key[len("encoder.") :]] = value
        elif key.startswith("quant_conv."):
            encoder_state[key] = value
        elif key.startswith("decoder."):
            decoder_state[key[len("decoder.") :]] = value
        elif key.startswith("post_quant_conv."):
            decoder_state[key] = value
        else:
            unmapped.append(key)
    if unmapped:
        raise CicldError(f"the AutoencoderKL in {path} has keys cicld cannot place: {', '.join(unmapped[:3])}")
    # The decoder's own additions (f_cls, fusions) keep their initialisation.
    own = {k: v for k, v in model.decoder.state_dict().items() if k.startswith(("f_cls.", "fusions."))}
    encoder_what, decoder_what = f"encoder weights of {path}", f"decoder weights of {path}"
    check_state_dict(model.encoder.state_dict(), encoder_state, what=encoder_what)
    check_state_dict(
        {k: v for k, v in model.decoder.state_dict().items() if k not in own}, decoder_state, what=decoder_what
    )
    load_state_dict_strict(model.encoder, encoder_state, what=encoder_what)
    load_state_dict_strict(model.decoder, {**decoder_state, **own}, what=decoder_what)
    model.config.scaling_factor = float(ae_config.get("scaling_factor", 1.0) or 1.0)
