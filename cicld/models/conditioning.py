"""Label conditioning: the mask encoder f_mask and Eq. 5 at the UNet mid-block.

Eq. 5 of the paper, ô = o + σ(o·cᵀ)·c, read per spatial position of the mid-block output
o ∈ R^{B×C×h×w} with c ∈ R^{B×C}: ô = o + σ(⟨o, c⟩/√C)·c. The √C keeps the gate out of
saturation (as in scaled dot-product attention). c = 0 is the null condition and makes Eq. 5
the identity, which is what inference without labels uses.

The condition enters ε_θ as an argument of its forward (:mod:`cicld.models.unet`).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from cicld.data.labels import IGNORE_INDEX
from cicld.errors import CicldError
from cicld.models.state import load_state_dict_strict


def eq5_condition(hidden: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    """ô = o + σ(⟨o, c⟩/√C)·c at every spatial position (Eq. 5)."""
    c = condition.to(hidden.dtype)[:, :, None, None]
    gate = torch.sigmoid((hidden * c).sum(dim=1, keepdim=True) / math.sqrt(hidden.shape[1]))
    return hidden + gate * c


def one_hot_labels(labels: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, H, W) trainIds -> (B, K, H, W) one-hot; ignore (255) and any id ≥ K give all zeros."""
    valid = (labels >= 0) & (labels < num_classes)
    onehot = F.one_hot(torch.where(valid, labels, 0).long(), num_classes).permute(0, 3, 1, 2)
    return (onehot * valid[:, None]).to(dtype)


class MaskEncoder(nn.Module):
    """f_mask: one-hot label map -> condition vector c of the UNet mid-block width.

    The one-hot map is first area-pooled by ``pool`` (class fractions per cell), then a small
    strided CNN and global average pooling give a vector that ``proj`` maps to the mid width.
    Samples whose label is entirely ignore get c = 0, the null condition.
    """

    def __init__(
        self,
        num_classes: int = 19,
        channels: tuple[int, ...] = (32, 64, 128, 256),
        condition_channels: int = 512,
        pool: int = 4,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.pool = pool
        layers: list[nn.Module] = []
        previous = num_classes
        for width in channels:
            layers += [nn.Conv2d(previous, width, 3, stride=2, padding=1), nn.SiLU()]
            previous = width
        self.cnn = nn.Sequential(*layers)
        self.proj = nn.Linear(previous, condition_channels)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        onehot = one_hot_labels(labels, self.num_classes, dtype=self.proj.weight.dtype)
        if self.pool > 1:
            onehot = F.avg_pool2d(onehot, self.pool, ceil_mode=True)
        condition = self.proj(self.cnn(onehot).mean(dim=(2, 3)))
        has_label = (labels != IGNORE_INDEX).flatten(1).any(dim=1)
        return condition * has_label[:, None].to(condition.dtype)

    def load_weights(self, path: str | Path) -> None:
        """Initialise from a local safetensors file holding exactly this module's state dict."""
        path = Path(path)
        if not path.is_file():
            raise CicldError(f"mask encoder weight file not found: {path}")
        load_state_dict_strict(self, load_file(str(path)), what=f"mask encoder weights {path}")
