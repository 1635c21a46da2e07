"""cicld: unsupervised domain-adaptive semantic segmentation with a latent diffusion model.

The package is laid out in pipeline order:

- :mod:`cicld.data`        labels, on-disk dataset formats, ``prepare-data``, the toy domain pair,
                           torch datasets and augmentation;
- :mod:`cicld.models`      the CICLD network (autoencoder, latent UNet, heads) and its inference;
- :mod:`cicld.training`    ``pretrain-ae``, ``pretrain-ldm`` and ``adapt``;
- :mod:`cicld.evaluation`  mIoU and prediction export;
- :mod:`cicld.cli`         the thin Typer command line over all of the above.
"""

__version__ = "0.1.0.dev0"
