"""Image sizes: (width, height), as the command line writes them (``WIDTHxHEIGHT``; docs/design.md,
"Sizes"), and the one check of their range."""

from __future__ import annotations

from cicld.errors import CicldError

#: The longest side cicld takes for a crop or a resize: beyond any driving data set (Cityscapes'
#: 2048, Mapillary's some 5000), and small enough that no size overflows a tensor's int64 shape.
MAX_SIDE = 16384


def check_size(
    size: tuple[int, int],
    name: str,
    low: tuple[int, int] = (1, 1),
    high: tuple[int, int] = (MAX_SIDE, MAX_SIDE),
    error: type[CicldError] = CicldError,
) -> None:
    """A one-line ``error`` naming ``name`` (the flag) unless ``low`` ≤ ``size`` ≤ ``high``, side by side."""
    width, height = size
    if width < low[0] or height < low[1]:
        raise error(f"{name} {width}x{height} is too small; use at least {low[0]}x{low[1]}")
    if width > high[0] or height > high[1]:
        raise error(f"{name} {width}x{height} is too large; use at most {high[0]}x{high[1]}")
