"""CICLD's inference: whole images and sliding windows, with seeded noise.

A mixin of :class:`~cicld.models.cicld.CICLD`: it needs the model's ``config``, ``encode``,
``condition``, ``predict_noise``, ``segment``, ``diffusion``, ``device`` and ``dtype``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cicld.errors import CicldError

#: Inference noise seed when the caller gives neither a generator nor noise.
DEFAULT_NOISE_SEED = 0


class SegmentationInference:
    """``predict`` (whole images, padded) and ``predict_sliding`` (overlapping windows)."""

    @torch.no_grad()
    def predict(
        self,
        images: torch.Tensor,
        steps: int | None = None,
        refine: int = 0,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        use_inter_coder: bool = True,
    ) -> torch.Tensor:
        """Whole-image logits (B, K, H, W) after S = ``steps`` DDIM steps (default ``config.inference_steps``).

        Images of any size are padded (bottom/right, value 0 = the normalised mean colour) to a
        multiple of ``config.size_divisor``. The null condition is used, then ``refine`` more
        passes with c = f_mask(previous argmax). ``noise`` (shaped like the padded image's latent)
        overrides the seeded noise.
        """
        steps = self.config.inference_steps if steps is None else steps
        padded, (height, width) = self._pad(images)
        if noise is None and steps > 0:
            noise = self._inference_noise(padded, generator)
        logits = None
        labels = None
        for _ in range(refine + 1):
            logits = self._predict_padded(padded, steps, noise, labels, use_inter_coder)
            labels = logits.argmax(dim=1)
        return logits[..., :height, :width]

    @torch.no_grad()
    def predict_sliding(
        self,
        images: torch.Tensor,
        window: int | tuple[int, int] = 512,
        overlap: int | tuple[int, int] = 128,
        window_batch: int = 4,
        steps: int | None = None,
        refine: int = 0,
        generator: torch.Generator | None = None,
        use_inter_coder: bool = True,
    ) -> torch.Tensor:
        """Sliding-window logits (B, K, H, W): overlapping windows, run ``window_batch`` at a time,
        logits averaged where windows overlap.

        Memory is bounded by ``window_batch`` windows plus one logit map of the image. The noise
        is drawn once for the whole (padded) image and cropped per window, so a window covering
        the whole image reproduces :meth:`predict` exactly. ``window`` and ``overlap`` are one int
        (square) or (width, height), as every size in the package. ``window`` must be a multiple of
        ``config.size_divisor`` and ``overlap`` of the latent factor (8); windows larger than the
        image shrink to it. Refinement passes condition each window on the argmax of the whole
        previous sliding-window prediction.
        """
        steps = self.config.inference_steps if steps is None else steps
        win_w, win_h = _width_height(window)
        over_w, over_h = _width_height(overlap)
        divisor, factor = self.config.size_divisor, self.config.vae_scale_factor
        if win_h % divisor or win_w % divisor or win_h <= 0 or win_w <= 0:
            raise CicldError(f"sliding window {win_w}x{win_h} must be a positive multiple of {divisor}")
        if over_h % factor or over_w % factor or not (0 <= over_h < win_h and 0 <= over_w < win_w):
            raise CicldError(f"window overlap {over_w}x{over_h} must be a multiple of {factor} smaller than the window")
        if window_batch < 1:
            raise CicldError(f"window_batch must be at least 1, got {window_batch}")
        padded, (height, width) = self._pad(images)
        padded_h, padded_w = padded.shape[-2:]
        win_h, win_w = min(win_h, padded_h), min(win_w, padded_w)
        tiles = [
            (b, y, x)
            for b in range(padded.shape[0])
            for y in _window_starts(padded_h, win_h, over_h)
            for x in _window_starts(padded_w, win_w, over_w)
        ]
        noise = self._inference_noise(padded, generator) if steps > 0 else None
        logits = None
        labels = None
        for _ in range(refine + 1):
            logits = padded.new_zeros(padded.shape[0], self.config.num_classes, padded_h, padded_w)
            counts = padded.new_zeros(padded.shape[0], 1, padded_h, padded_w)
            for start in range(0, len(tiles), window_batch):
                chunk = tiles[start : start + window_batch]
                crops = torch.stack([padded[b, :, y : y + win_h, x : x + win_w] for b, y, x in chunk])
                crop_noise = crop_labels = None
                if noise is not None:
                    crop_noise = torch.stack(
                        [
                            noise[b, :, y // factor : (y + win_h) // factor, x // factor : (x + win_w) // factor]
                            for b, y, x in chunk
                        ]
                    )
                if labels is not None:
                    crop_labels = torch.stack([labels[b, y : y + win_h, x : x + win_w] for b, y, x in chunk])
                out = self._predict_padded(crops, steps, crop_noise, crop_labels, use_inter_coder)
                for j, (b, y, x) in enumerate(chunk):
                    logits[b, :, y : y + win_h, x : x + win_w] += out[j]
                    counts[b, :, y : y + win_h, x : x + win_w] += 1
            logits = logits / counts
            labels = logits.argmax(dim=1)
        return logits[..., :height, :width]

    def _predict_padded(
        self,
        images: torch.Tensor,
        steps: int,
        noise: torch.Tensor | None,
        condition_labels: torch.Tensor | None,
        use_inter_coder: bool,
    ) -> torch.Tensor:
        z0, features = self.encode(images)
        condition = self.condition(condition_labels)
        z0_hat = self.diffusion.denoise(z0, lambda z, t: self.predict_noise(z, t, condition), steps, noise)
        return self.segment(z0_hat, features if use_inter_coder else None, images.shape[-2:])

    def _inference_noise(self, padded: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """One latent noise draw per image. Without ``generator`` every image gets the draw of a fresh
        seed-``DEFAULT_NOISE_SEED`` generator, so its prediction depends on the image alone, never on
        the other images of its batch; with one, the images take successive draws from it."""
        factor = self.config.vae_scale_factor
        shape = (1, self.config.latent_channels, padded.shape[-2] // factor, padded.shape[-1] // factor)
        draws = []
        for _ in range(padded.shape[0]):
            source = generator if generator is not None else torch.Generator().manual_seed(DEFAULT_NOISE_SEED)
            draws.append(self.diffusion.draw_noise(shape, source, padded.device, padded.dtype))
        return torch.cat(draws)

    def _pad(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        if images.dim() != 4 or images.shape[1] != self.config.in_channels:
            raise CicldError(f"expected images shaped (B, {self.config.in_channels}, H, W), got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        divisor = self.config.size_divisor
        pad_h, pad_w = -height % divisor, -width % divisor
        images = images.to(device=self.device, dtype=self.dtype)
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
        return images, (height, width)


def _width_height(value: int | tuple[int, int]) -> tuple[int, int]:
    """A size given as one int (square) or as (width, height), the package's order for sizes."""
    if isinstance(value, int):
        return value, value
    width, height = value
    return int(width), int(height)


def _window_starts(size: int, window: int, overlap: int) -> list[int]:
    """Window offsets covering [0, size): every window − overlap, the last one flush with the end."""
    if window >= size:
        return [0]  # also where the window shrank to the image and the overlap no longer fits
    stride = window - overlap
    count = math.ceil((size - window) / stride) + 1
    return sorted({min(i * stride, size - window) for i in range(count)})
