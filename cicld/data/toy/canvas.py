"""Rasterising in perspective: a frame's label codes, instance ids and linear RGB, and a pinhole
camera to draw primitives on them with."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cicld.data.toy.world import SKY

Region = tuple  # (row0, col0, mask) of a primitive inside the image


class _Canvas:
    """Label codes, instance ids and linear RGB of one frame, and a pinhole camera to draw with.

    The camera looks down +Z along the street, X to the right, Y up, ground at Y = 0; every
    primitive is rasterised only inside its bounding box, by half-planes or quadrics.
    """

    def __init__(self, width: int, height: int, focal: float, vpx: float, horizon: float, cam_height: float):
        self.w, self.h = width, height
        self.f, self.vpx, self.yh, self.cam = focal, vpx, horizon, cam_height
        self.label = np.full((height, width), SKY, np.uint8)
        self.inst = np.zeros((height, width), np.uint16)
        self.img = np.zeros((height, width, 3), np.float32)
        self.cols = np.arange(width, dtype=np.float32) + 0.5
        self.rows = np.arange(height, dtype=np.float32) + 0.5
        self.instances = 0

    # projection ---------------------------------------------------------------------------
    def px(self, x: float, z: float) -> float:
        return self.vpx + self.f * x / z

    def py(self, y: float, z: float) -> float:
        return self.yh + self.f * (self.cam - y) / z

    def new_instance(self) -> int:
        self.instances += 1
        return self.instances

    # screen-space primitives ---------------------------------------------------------------
    def _window(self, x0: float, y0: float, x1: float, y1: float):
        c0, c1 = max(0, math.ceil(x0 - 0.5)), min(self.w, math.ceil(x1 - 0.5))
        r0, r1 = max(0, math.ceil(y0 - 0.5)), min(self.h, math.ceil(y1 - 0.5))
        if c0 >= c1 or r0 >= r1:
            return None
        return r0, r1, c0, c1

    def rect(self, x0: float, y0: float, x1: float, y1: float) -> Region | None:
        """Axis-aligned rectangle; at least one pixel wide and high (thin things stay visible)."""
        if x1 - x0 < 1.0:
            x0, x1 = (x0 + x1) / 2 - 0.5, (x0 + x1) / 2 + 0.5
        if y1 - y0 < 1.0:
            y0, y1 = (y0 + y1) / 2 - 0.5, (y0 + y1) / 2 + 0.5
        win = self._window(x0, y0, x1, y1)
        if win is None:
            return None
        r0, r1, c0, c1 = win
        return r0, c0, np.ones((r1 - r0, c1 - c0), bool)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, inner: float = 0.0) -> Region | None:
        """Filled ellipse (a ring when ``inner`` > 0, the inner radius as a fraction)."""
        rx, ry = max(rx, 0.6), max(ry, 0.6)
        win = self._window(cx - rx, cy - ry, cx + rx, cy + ry)
        if win is None:
            return None
        r0, r1, c0, c1 = win
        dx = ((self.cols[c0:c1] - cx) / rx) ** 2
        dy = ((self.rows[r0:r1] - cy) / ry) ** 2
        d = dy[:, None] + dx[None, :]
        mask = d <= 1.0
        if inner > 0:
            mask &= d >= inner * inner
        return r0, c0, mask

    def polygon(self, points: Sequence[tuple[float, float]]) -> Region | None:
        """Convex polygon (either winding), as the intersection of its edges' half-planes."""
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        win = self._window(min(xs), min(ys), max(xs), max(ys))
        if win is None:
            return None
        r0, r1, c0, c1 = win
        cols, rows = self.cols[c0:c1][None, :], self.rows[r0:r1][:, None]
        area = sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))
        sign = 1.0 if area >= 0 else -1.0
        mask = np.ones((r1 - r0, c1 - c0), bool)
        for i in range(len(xs)):
            ax, ay, bx, by = xs[i - 1], ys[i - 1], xs[i], ys[i]
            mask &= sign * ((bx - ax) * (rows - ay) - (by - ay) * (cols - ax)) <= 0
        return r0, c0, mask

    # world-space primitives ----------------------------------------------------------------
    def front(self, x0: float, x1: float, y0: float, y1: float, z: float) -> Region | None:
        """A rectangle facing the camera at depth z."""
        return self.rect(self.px(x0, z), self.py(y1, z), self.px(x1, z), self.py(y0, z))

    def side(self, x: float, z0: float, z1: float, y0: float, y1: float) -> Region | None:
        """A rectangle in the plane X = x between depths z0 < z1 (a facade, a fence, a bus's flank)."""
        z0 = max(z0, 0.5)
        if z1 <= z0:
            return None
        pts = [
            (self.px(x, z0), self.py(y0, z0)),
            (self.px(x, z1), self.py(y0, z1)),
            (self.px(x, z1), self.py(y1, z1)),
            (self.px(x, z0), self.py(y1, z0)),
        ]
        return self.polygon(pts)

    def blob(self, x: float, y: float, z: float, rx: float, ry: float, inner: float = 0.0) -> Region | None:
        s = self.f / z
        return self.ellipse(self.px(x, z), self.py(y, z), rx * s, ry * s, inner)

    def shape(self, points: Sequence[tuple[float, float]], z: float) -> Region | None:
        """A convex polygon given in metres (X, Y) in the plane at depth z."""
        return self.polygon([(self.px(x, z), self.py(y, z)) for x, y in points])

    # painting ------------------------------------------------------------------------------
    def paint(self, region: Region | None, code: int, color, instance: int = 0) -> None:
        if region is None:
            return
        r0, c0, mask = region
        h, w = mask.shape
        if not mask.any():
            return
        self.label[r0 : r0 + h, c0 : c0 + w][mask] = code
        self.inst[r0 : r0 + h, c0 : c0 + w][mask] = instance
        self.img[r0 : r0 + h, c0 : c0 + w][mask] = color

    def tint(self, region: Region | None, color) -> None:
        """Change colour only (windows, markings, lamps): the label stays what is underneath."""
        if region is None:
            return
        r0, c0, mask = region
        h, w = mask.shape
        self.img[r0 : r0 + h, c0 : c0 + w][mask] = color
