"""The street grammar: one street sampled from a domain's statistics (:mod:`~cicld.data.toy.world`)
and drawn from far to near: sky, buildings with windows, road, sidewalks, terrain, trees, poles
with signs and traffic lights, vehicles, persons and riders, walls and fences."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from cicld.data.labels import NUM_CLASSES
from cicld.data.toy.canvas import _Canvas
from cicld.data.toy.world import (  # the label codes
    BICYCLE,
    BUILDING,
    BUS,
    CAR,
    FENCE,
    LIGHT,
    MOTORCYCLE,
    PERSON,
    POLE,
    RIDER,
    ROAD,
    SIDEWALK,
    SIGN,
    STATIC,
    TERRAIN,
    TRUCK,
    VEGETATION,
    WALL,
    _World,
)


class _Scene:
    """Samples one street and draws it: ground, far skyline, both street sides, then every
    object between them from far to near (painter's algorithm)."""

    def __init__(self, rng: np.random.Generator, world: _World, width: int, height: int):
        self.rng, self.world = rng, world
        u = rng.uniform
        cv = _Canvas(
            width,
            height,
            focal=width * u(*world.focal),
            vpx=width * (0.5 + u(-0.07, 0.07)),
            horizon=height * u(*world.horizon),
            cam_height=u(*world.cam_height),
        )
        self.cv = cv
        # the renderer's time of day and weather: overall brightness and a mild colour tint
        self.tone = (u(0.75, 1.15) * u(0.9, 1.1, 3)).astype(np.float32)
        self.road_l, self.road_r = u(*world.road_left), u(*world.road_right)
        self.walk_l, self.walk_r = u(*world.sidewalk), u(*world.sidewalk)
        self.z_far = u(110.0, 200.0)
        self.crossings: list[tuple[float, float]] = []
        if rng.random() < world.intersection:
            z0 = u(12.0, 45.0)
            self.crossings.append((z0, z0 + u(10.0, 16.0)))
        self.colors = {
            "road": self.pick("road"),
            "sidewalk": self.pick("sidewalk"),
            "terrain": self.pick("terrain"),
            "marking": self.pick("marking"),
        }
        self.objects: list[tuple[float, Callable[[], None]]] = []  # (depth, draw), drawn far to near
        self.side_items: list[tuple[float, Callable[[], None]]] = []

    # colours -------------------------------------------------------------------------------
    def pick(self, name: str, jitter: float | None = None) -> np.ndarray:
        options = self.world.palette[name]
        base = np.asarray(options[self.rng.integers(len(options))], np.float32) / 255.0
        j = self.world.jitter if jitter is None else jitter
        return np.clip(base * self.rng.uniform(1 - j, 1 + j, 3).astype(np.float32), 0.0, 1.0)

    def in_crossing(self, z: float) -> bool:
        return any(z0 - 1.0 <= z <= z1 + 1.0 for z0, z1 in self.crossings)

    # composition ---------------------------------------------------------------------------
    def compose(self) -> None:
        self.draw_sky()
        self.plan_sides()
        self.draw_ground()
        self.draw_skyline()
        for _, draw in sorted(self.side_items, key=lambda item: -item[0]):
            draw()
        self.plan_objects()
        for _, draw in sorted(self.objects, key=lambda item: -item[0]):
            draw()

    def draw_sky(self) -> None:
        cv = self.cv
        top, bottom = self.pick("sky_top", 0.05), self.pick("sky_horizon", 0.03)
        t = np.clip(cv.rows / max(cv.yh, 1.0), 0.0, 1.0)[:, None, None]
        cv.img[:] = top * (1 - t) + bottom * t

    # street sides --------------------------------------------------------------------------
    def plan_sides(self) -> None:
        rng, world = self.rng, self.world
        self.sides = {}
        for side, road, walk in ((-1, self.road_l, self.walk_l), (1, self.road_r, self.walk_r)):
            verge = rng.uniform(0.6, 1.8) if rng.random() < world.verge else 0.0  # grass by the kerb
            edge = road + verge + walk
            plane = edge + rng.uniform(*world.setback)
            segments = []  # (z0, z1, kind, setback class)
            z = 1.0
            while z < self.z_far:
                crossing = next(((a, b) for a, b in self.crossings if a <= z < b), None)
                if crossing is not None:
                    segments.append((z, crossing[1], "crossing", ROAD))
                    z = crossing[1]
                    continue
                kind = ("building", "vegetation", "open")[rng.choice(3, p=world.side_mix)]
                length = rng.uniform(8.0, 30.0) if kind == "building" else rng.uniform(6.0, 20.0)
                z1 = min(z + length, self.z_far, *[a for a, _ in self.crossings if a > z])
                setback = TERRAIN if (kind != "building" or rng.random() < world.lawn) else SIDEWALK
                segments.append((z, z1, kind, setback))
                z = z1
            self.sides[side] = dict(road=road, verge=verge, edge=edge, plane=plane, segments=segments)
            for z0, z1, kind, _ in segments:
                if kind == "building":
                    self.plan_building(side, plane, z0, z1)
                elif kind == "vegetation":
                    self.plan_vegetation(side, plane, z0, z1)
                elif kind == "open":
                    self.plan_open(side, plane, edge, z0, z1)
                else:
                    self.plan_building(side, plane + rng.uniform(12.0, 30.0), z0 + 3.0, z1 + 25.0, far=True)

    def plan_building(self, side: int, plane: float, z0: float, z1: float, far: bool = False) -> None:
        rng, cv = self.rng, self.cv
        height = rng.uniform(*self.world.building_height)
        color = self.pick("building")
        window = self.pick("window", 0.08)
        shade = 0.9 if side < 0 else 0.74  # flat shading: one side of the street is in the sun
        spacing, floor = rng.uniform(2.2, 4.0), rng.uniform(2.8, 3.6)
        win_w, win_h = rng.uniform(0.3, 0.6), rng.uniform(0.35, 0.6)
        shop = rng.random() < 0.5
        x = side * plane

        def draw() -> None:
            depth_x = x + side * 15.0
            cv.paint(cv.front(min(x, depth_x), max(x, depth_x), 0.0, height, z0), BUILDING, color)
            region = cv.side(x, z0, z1, 0.0, height)
            cv.paint(region, BUILDING, color * shade)
            if region is None:
                return
            r0, c0, mask = region
            h, w = mask.shape
            zc = cv.f * abs(x) / np.maximum(np.abs(cv.cols[c0 : c0 + w] - cv.vpx), 1e-3)  # depth per column
            yc = cv.cam - (cv.rows[r0 : r0 + h, None] - cv.yh) * zc[None, :] / cv.f  # height per pixel
            along = np.mod(zc - z0, spacing) / spacing
            up = np.mod(yc, floor) / floor
            windows = mask & (np.abs(along - 0.5)[None, :] < win_w / 2) & (np.abs(up - 0.5) < win_h / 2)
            windows &= (yc > 3.0) & (yc < height - 0.8)
            if shop:
                band = mask & (yc > 0.4) & (yc < 2.6) & (np.abs(along - 0.5)[None, :] < 0.42)
                windows |= band
            cv.tint((r0, c0, windows), window)

        self.side_items.append((z0 if not far else z0 + 1000.0, draw))

    def plan_vegetation(self, side: int, plane: float, z0: float, z1: float) -> None:
        rng, cv = self.rng, self.cv
        hedge_h = rng.uniform(0.8, 2.0)
        hedge_color = self.pick("vegetation")
        x = side * plane
        self.side_items.append((z0, lambda: cv.paint(cv.side(x, z0, z1, 0.0, hedge_h), VEGETATION, hedge_color * 0.85)))
        z = z0 + rng.uniform(1.0, 4.0)
        while z < z1:
            self.add_tree(self.side_items, x + side * rng.uniform(0.0, 2.0), z, big=True)
            z += rng.uniform(3.0, 7.0)

    def plan_open(self, side: int, plane: float, edge: float, z0: float, z1: float) -> None:
        rng, cv = self.rng, self.cv
        roll = rng.random()
        x = side * plane
        if roll < 0.4:
            wall_h, color = rng.uniform(1.0, 3.0), self.pick("wall")
            self.side_items.append((z0, lambda: cv.paint(cv.side(x, z0, z1, 0.0, wall_h), WALL, color)))
        elif roll < 0.8:
            self.add_fence(side * edge, z0, z1)
        for _ in range(rng.poisson(1.5)):
            self.add_tree(self.side_items, x + side * rng.uniform(2.0, 8.0), rng.uniform(z0, z1), big=True)

    def add_fence(self, x: float, z0: float, z1: float) -> None:
        rng, cv = self.rng, self.cv
        fence_h, color = rng.uniform(0.9, 2.0), self.pick("fence")
        slat = rng.uniform(0.12, 0.3)

        def draw() -> None:
            region = cv.side(x, z0, z1, 0.0, fence_h)
            cv.paint(region, FENCE, color)
            if region is None:
                return
            r0, c0, mask = region
            zc = cv.f * abs(x) / np.maximum(np.abs(cv.cols[c0 : c0 + mask.shape[1]] - cv.vpx), 1e-3)
            gaps = mask & (np.mod(zc, 2 * slat) < slat)[None, :]
            cv.tint((r0, c0, gaps), color * 0.55)

        self.side_items.append((z0 - 0.5, draw))

    def draw_skyline(self) -> None:
        rng, cv = self.rng, self.cv
        z = self.z_far
        x = -(self.sides[-1]["plane"] + 40.0)
        right = self.sides[1]["plane"] + 40.0
        while x < right:
            width = rng.uniform(8.0, 25.0)
            if rng.random() < 0.25:
                cv.paint(
                    cv.front(x, x + width, 0.0, rng.uniform(4.0, 10.0), z), VEGETATION, self.pick("vegetation") * 0.8
                )
            else:
                cv.paint(cv.front(x, x + width, 0.0, rng.uniform(5.0, 35.0), z), BUILDING, self.pick("building") * 0.95)
            x += width

    # ground --------------------------------------------------------------------------------
    def draw_ground(self) -> None:
        cv = self.cv
        r0 = max(0, math.ceil(cv.yh + 0.5))
        if r0 >= cv.h:
            return
        dy = cv.rows[r0:, None] - cv.yh
        z = np.broadcast_to(cv.f * cv.cam / dy, (cv.h - r0, cv.w))
        x = (cv.cols[None, :] - cv.vpx) * cv.cam / dy
        code = np.full(z.shape, ROAD, np.uint8)
        for side in (-1, 1):
            s = self.sides[side]
            along = side * x  # distance from the camera's line, positive on this side
            starts = np.array([seg[0] for seg in s["segments"]], np.float32)
            walk_code = np.array([ROAD if seg[2] == "crossing" else SIDEWALK for seg in s["segments"]], np.uint8)
            setback_code = np.array([seg[3] for seg in s["segments"]], np.uint8)
            beyond_code = np.array([ROAD if seg[2] == "crossing" else TERRAIN for seg in s["segments"]], np.uint8)
            index = np.clip(np.searchsorted(starts, z, side="right") - 1, 0, len(starts) - 1)
            code = np.where(along > s["road"], walk_code[index], code)
            verge = (along > s["road"]) & (along <= s["road"] + s["verge"]) & (walk_code[index] == SIDEWALK)
            code = np.where(verge, TERRAIN, code)
            code = np.where(along > s["edge"], setback_code[index], code)
            code = np.where(along > s["plane"], beyond_code[index], code)
        colors = np.zeros((NUM_CLASSES, 3), np.float32)
        colors[ROAD], colors[SIDEWALK], colors[TERRAIN] = (
            self.colors["road"],
            self.colors["sidewalk"],
            self.colors["terrain"],
        )
        rgb = colors[code]
        # lane markings: solid edge lines, dashed lane lines, a zebra crossing before an intersection
        on_road = (code == ROAD) & (x > -self.road_l) & (x < self.road_r)
        lines = (np.abs(x + self.road_l - 0.3) < 0.08) | (np.abs(x - self.road_r + 0.3) < 0.08)
        for lane in np.arange(-self.road_l + 3.3, self.road_r - 1.5, 3.3):
            lines |= (np.abs(x - lane) < 0.07) & (np.mod(z, 9.0) < 3.5)
        for z0, _ in self.crossings:
            lines |= (z > z0 - 4.5) & (z < z0 - 1.0) & (np.mod(x, 1.1) < 0.55)
        rgb[on_road & lines] = self.colors["marking"]
        cv.label[r0:] = code
        cv.img[r0:] = rgb
        self.ground = (r0, x, z)

    # objects -------------------------------------------------------------------------------
    def plan_objects(self) -> None:
        rng, world = self.rng, self.world
        poisson = rng.poisson
        # parked cars along the kerbs
        for side in (-1, 1):
            if rng.random() < world.parked_row:
                z = rng.uniform(3.0, 10.0)
                while z < 70.0:
                    length = rng.uniform(3.8, 4.8)
                    if rng.random() < 0.7 and not self.in_crossing(z) and not self.in_crossing(z + length):
                        x = side * (self.sides[side]["road"] - 1.1)
                        self.add_car(x, z, length, facing_away=side > 0 or rng.random() < 0.5)
                    z += length + rng.uniform(0.6, 6.0)
        lanes = np.arange(-self.road_l + 1.65, self.road_r - 1.0, 3.3)
        for _ in range(poisson(world.moving_cars)):
            lane = lanes[rng.integers(len(lanes))] if len(lanes) else 0.0
            self.add_car(
                lane + rng.uniform(-0.4, 0.4), rng.uniform(7.0, 90.0), rng.uniform(3.8, 4.8), facing_away=lane > -1.0
            )
        for _ in range(poisson(world.buses)):
            lane = lanes[rng.integers(len(lanes))] if len(lanes) else 0.0
            self.add_bus(lane, rng.uniform(10.0, 70.0))
        for _ in range(poisson(world.trucks)):
            lane = lanes[rng.integers(len(lanes))] if len(lanes) else 0.0
            self.add_truck(lane, rng.uniform(10.0, 70.0))
        # people: on the sidewalks, some crossing the street
        for _ in range(poisson(world.persons)):
            side = -1 if rng.random() < 0.5 else 1
            s = self.sides[side]
            z = rng.uniform(4.0, 55.0)
            if rng.random() < 0.15:
                x = rng.uniform(-self.road_l, self.road_r)
            else:
                x = side * rng.uniform(s["road"] + 0.4, s["edge"] - 0.3)
            group = 1 + (rng.poisson(0.6) if rng.random() < 0.4 else 0)
            for g in range(group):
                self.add_person(x + rng.uniform(-0.6, 0.6) * g, z + rng.uniform(-0.8, 0.8) * g)
        for _ in range(poisson(world.riders)):
            side = -1 if rng.random() < 0.5 else 1
            x = side * (self.sides[side]["road"] - rng.uniform(0.5, 1.5))
            self.add_rider(x, rng.uniform(5.0, 45.0), motorcycle=rng.random() < 0.35)
        for _ in range(poisson(world.parked_bicycles)):
            side = -1 if rng.random() < 0.5 else 1
            s = self.sides[side]
            self.add_bicycle_parked(side * rng.uniform(s["road"] + 0.3, s["edge"] - 0.2), rng.uniform(4.0, 35.0))
        for _ in range(poisson(world.statics)):
            side = -1 if rng.random() < 0.5 else 1
            s = self.sides[side]
            self.add_static(side * rng.uniform(s["road"] + 0.3, s["edge"] - 0.2), rng.uniform(4.0, 40.0))
        # street furniture: poles with signs, lamps and traffic lights; street trees
        for side in (-1, 1):
            s = self.sides[side]
            z = rng.uniform(3.0, 14.0)
            while z < 80.0:
                self.add_pole(side, side * (s["road"] + 0.4), z)
                z += rng.uniform(10.0, 24.0)
            if rng.random() < world.tree_lined:
                z = rng.uniform(3.0, 10.0)
                while z < 70.0:
                    if not self.in_crossing(z):
                        self.add_tree(self.objects, side * (s["edge"] - 0.7), z, big=False)
                    z += rng.uniform(7.0, 13.0)
        for z0, z1 in self.crossings:
            for side in (-1, 1):
                self.add_traffic_light_pole(side, side * (self.sides[side]["road"] + 0.5), z0 - 1.5)
            if self.world.photo or rng.random() < 0.5:
                self.add_traffic_light_pole(-1, -(self.sides[-1]["road"] + 0.5), z1 + 1.0, overhead=False)

    def add_tree(self, items: list, x: float, z: float, big: bool) -> None:
        rng, cv = self.rng, self.cv
        height = rng.uniform(5.0, 11.0) if big else rng.uniform(4.0, 8.0)
        radius = rng.uniform(1.6, 3.5) if big else rng.uniform(1.2, 2.4)
        trunk_w = rng.uniform(0.2, 0.4)
        color, trunk = self.pick("vegetation"), self.pick("trunk")
        blobs = [
            (rng.uniform(-0.5, 0.5) * radius, rng.uniform(-0.4, 0.4) * radius, rng.uniform(0.55, 0.9) * radius)
            for _ in range(4)
        ]

        def draw() -> None:
            cv.paint(cv.front(x - trunk_w / 2, x + trunk_w / 2, 0.0, height - radius * 0.5, z), VEGETATION, trunk)
            for i, (dx, dy, r) in enumerate(blobs):
                cv.paint(cv.blob(x + dx, height - radius + dy, z, r, r * 0.9), VEGETATION, color * (0.85 + 0.05 * i))

        items.append((z, draw))

    def add_car(self, x: float, z: float, length: float, facing_away: bool) -> None:
        rng, cv = self.rng, self.cv
        width, height = rng.uniform(1.7, 1.95), rng.uniform(1.35, 1.6)
        color, glass, tyre = self.pick("car"), self.pick("glass", 0.05), self.pick("tyre", 0.0)
        instance = cv.new_instance()
        x0, x1 = x - width / 2, x + width / 2
        belt = height * 0.55

        def draw() -> None:
            # the flank the camera sees, then the face toward it
            if x1 < -0.3 or x0 > 0.3:
                sx = x1 if x1 < 0 else x0
                cv.paint(cv.side(sx, z, z + length, 0.15, belt), CAR, color * 0.8, instance)
                cv.paint(cv.side(sx * 0.95, z + length * 0.2, z + length * 0.85, belt, height), CAR, glass, instance)
                for wz in (z + 0.8, z + length - 0.8):
                    cv.paint(cv.blob(sx, 0.33, wz, 0.06, 0.33), CAR, tyre, instance)
            cv.paint(cv.front(x0, x1, 0.15, belt, z), CAR, color, instance)
            inset = width * 0.12
            cv.paint(
                cv.shape(
                    [(x0 + inset, belt), (x1 - inset, belt), (x1 - inset * 2, height), (x0 + inset * 2, height)], z
                ),
                CAR,
                color * 0.9,
                instance,
            )
            cv.paint(
                cv.shape(
                    [
                        (x0 + inset * 1.4, belt + 0.05),
                        (x1 - inset * 1.4, belt + 0.05),
                        (x1 - inset * 2.3, height - 0.08),
                        (x0 + inset * 2.3, height - 0.08),
                    ],
                    z,
                ),
                CAR,
                glass,
                instance,
            )
            for wx in (x0 + 0.1, x1 - 0.35):
                cv.paint(cv.front(wx, wx + 0.25, 0.0, 0.3, z + 0.05), CAR, tyre, instance)
            lamp = np.array((0.9, 0.1, 0.1) if facing_away else (0.95, 0.95, 0.85), np.float32)
            for lx in (x0 + 0.08, x1 - 0.33):
                cv.tint(cv.front(lx, lx + 0.25, belt - 0.25, belt - 0.08, z), lamp)

        self.objects.append((z, draw))

    def add_bus(self, x: float, z: float) -> None:
        rng, cv = self.rng, self.cv
        width, height, length = 2.55, rng.uniform(3.0, 3.4), rng.uniform(11.0, 13.0)
        color, glass, tyre = self.pick("bus"), self.pick("glass", 0.05), self.pick("tyre", 0.0)
        instance = cv.new_instance()
        x0, x1 = x - width / 2, x + width / 2

        def draw() -> None:
            if x1 < -0.3 or x0 > 0.3:
                sx = x1 if x1 < 0 else x0
                cv.paint(cv.side(sx, z, z + length, 0.3, height), BUS, color * 0.8, instance)
                cv.paint(cv.side(sx, z + 0.5, z + length - 0.5, 1.3, height - 0.4), BUS, glass, instance)
                for wz in (z + 1.5, z + length - 2.5):
                    cv.paint(cv.blob(sx, 0.5, wz, 0.08, 0.5), BUS, tyre, instance)
            cv.paint(cv.front(x0, x1, 0.3, height, z), BUS, color, instance)
            cv.paint(cv.front(x0 + 0.2, x1 - 0.2, 1.5, height - 0.3, z), BUS, glass, instance)
            for wx in (x0 + 0.1, x1 - 0.4):
                cv.paint(cv.front(wx, wx + 0.3, 0.0, 0.35, z + 0.05), BUS, tyre, instance)

        self.objects.append((z, draw))

    def add_truck(self, x: float, z: float) -> None:
        rng, cv = self.rng, self.cv
        width, height, length = 2.5, rng.uniform(3.2, 3.9), rng.uniform(6.0, 9.0)
        cargo, cab, glass, tyre = self.pick("truck"), self.pick("car"), self.pick("glass", 0.05), self.pick("tyre", 0.0)
        instance = cv.new_instance()
        x0, x1 = x - width / 2, x + width / 2

        def draw() -> None:
            if x1 < -0.3 or x0 > 0.3:
                sx = x1 if x1 < 0 else x0
                cv.paint(cv.side(sx, z + length, z + length + 2.2, 0.5, 2.8), TRUCK, cab * 0.8, instance)
                cv.paint(cv.side(sx, z + length + 0.4, z + length + 1.6, 1.7, 2.6), TRUCK, glass, instance)
                cv.paint(cv.side(sx, z, z + length, 0.9, height), TRUCK, cargo * 0.82, instance)
                cv.paint(cv.side(sx, z, z + length, 0.5, 0.9), TRUCK, tyre * 2.0, instance)
                for wz in (z + 1.2, z + length - 1.0, z + length + 1.5):
                    cv.paint(cv.blob(sx, 0.5, wz, 0.08, 0.5), TRUCK, tyre, instance)
            cv.paint(cv.front(x0, x1, 0.9, height, z), TRUCK, cargo, instance)
            cv.paint(cv.front(x0 + 0.2, x1 - 0.2, 0.45, 0.9, z), TRUCK, tyre * 2.0, instance)
            for wx in (x0 + 0.1, x1 - 0.45):
                cv.paint(cv.front(wx, wx + 0.35, 0.0, 0.55, z + 0.05), TRUCK, tyre, instance)

        self.objects.append((z, draw))

    def _figure(
        self,
        code: int,
        x: float,
        y: float,
        z: float,
        height: float,
        instance: int,
        colors,
        lean: float = 0.0,
        sitting: bool = False,
    ) -> None:
        """A person (standing) or the upper body of a rider (sitting), ``y`` at the feet/seat."""
        cv = self.cv
        skin, top, legs = colors
        hip = y + (0.0 if sitting else 0.47 * height)
        shoulder = hip + 0.36 * height
        if not sitting:
            stride = self.rng.uniform(-0.15, 0.15)
            cv.paint(
                cv.shape([(x - 0.17, hip), (x - 0.02, hip), (x - 0.04 + stride, y), (x - 0.16 + stride, y)], z),
                code,
                legs,
                instance,
            )
            cv.paint(
                cv.shape([(x + 0.02, hip), (x + 0.17, hip), (x + 0.16 - stride, y), (x + 0.04 - stride, y)], z),
                code,
                legs * 0.9,
                instance,
            )
        else:
            cv.paint(
                cv.shape(
                    [(x - 0.05, hip + 0.05), (x + 0.1, hip + 0.05), (x + 0.35, hip - 0.5), (x + 0.25, hip - 0.5)], z
                ),
                code,
                legs,
                instance,
            )
        cv.paint(
            cv.shape([(x - 0.2, hip), (x + 0.2, hip), (x + 0.21 + lean, shoulder), (x - 0.21 + lean, shoulder)], z),
            code,
            top,
            instance,
        )
        cv.paint(
            cv.shape(
                [
                    (x - 0.27 + lean, shoulder),
                    (x - 0.19 + lean, shoulder),
                    (x - 0.2, hip + 0.05),
                    (x - 0.27, hip + 0.05),
                ],
                z,
            ),
            code,
            top * 0.85,
            instance,
        )
        cv.paint(
            cv.shape(
                [
                    (x + 0.19 + lean, shoulder),
                    (x + 0.27 + lean, shoulder),
                    (x + 0.27 + lean * 1.5, hip + 0.05),
                    (x + 0.2 + lean * 1.5, hip + 0.05),
                ],
                z,
            ),
            code,
            top * 0.85,
            instance,
        )
        cv.paint(cv.blob(x + lean * 1.1, shoulder + 0.13 * height * 0.75, z, 0.11, 0.13), code, skin, instance)

    def add_person(self, x: float, z: float) -> None:
        height = self.rng.uniform(1.55, 1.95) * (0.6 if self.rng.random() < 0.1 else 1.0)  # some children
        colors = (self.pick("skin", 0.05), self.pick("clothes"), self.pick("clothes") * 0.7)
        instance = self.cv.new_instance()
        self.objects.append((z, lambda: self._figure(PERSON, x, 0.0, z, height, instance, colors)))

    def _two_wheeler(self, code: int, x: float, z: float, direction: float, frame, tyre, instance: int) -> None:
        cv = self.cv
        radius = 0.34 if code == BICYCLE else 0.32
        back, ahead = x - direction * 0.55, x + direction * 0.55
        ring = 0.78 if code == BICYCLE else 0.55
        for wx in (back, ahead):
            cv.paint(cv.blob(wx, radius, z, radius, radius, inner=ring), code, tyre, instance)
        if code == BICYCLE:
            seat, bar = (x - direction * 0.15, 0.95), (x + direction * 0.42, 1.0)
            for a, b in (
                (back, seat),
                (seat, (x + direction * 0.05, radius)),
                ((x + direction * 0.05, radius), bar),
                (seat, bar),
                (bar, (ahead, radius)),
            ):
                a = a if isinstance(a, tuple) else (a, radius)
                cv.paint(cv.shape(_stroke(a, b, 0.035), z), code, frame, instance)
        else:
            cv.paint(
                cv.shape(
                    [
                        (back + direction * 0.1, radius + 0.1),
                        (ahead - direction * 0.15, radius + 0.05),
                        (ahead - direction * 0.3, 0.85),
                        (back + direction * 0.25, 0.9),
                    ],
                    z,
                ),
                code,
                frame,
                instance,
            )
            cv.paint(
                cv.shape(_stroke((ahead, radius), (ahead - direction * 0.2, 1.05), 0.05), z), code, tyre * 3.0, instance
            )

    def add_rider(self, x: float, z: float, motorcycle: bool) -> None:
        rng = self.rng
        direction = 1.0 if rng.random() < 0.5 else -1.0
        frame, tyre = self.pick("bike"), self.pick("tyre", 0.0)
        colors = (self.pick("skin", 0.05), self.pick("clothes"), self.pick("clothes") * 0.7)
        height = rng.uniform(1.6, 1.9)
        bike_code = MOTORCYCLE if motorcycle else BICYCLE
        bike_instance, rider_instance = self.cv.new_instance(), self.cv.new_instance()

        def draw() -> None:
            self._two_wheeler(bike_code, x, z, direction, frame, tyre, bike_instance)
            self._figure(
                RIDER,
                x - direction * 0.15,
                0.9,
                z - 0.05,
                height,
                rider_instance,
                colors,
                lean=direction * 0.12,
                sitting=True,
            )

        self.objects.append((z, draw))

    def add_bicycle_parked(self, x: float, z: float) -> None:
        direction = 1.0 if self.rng.random() < 0.5 else -1.0
        frame, tyre = self.pick("bike"), self.pick("tyre", 0.0)
        instance = self.cv.new_instance()
        self.objects.append((z, lambda: self._two_wheeler(BICYCLE, x, z, direction, frame, tyre, instance)))

    def add_static(self, x: float, z: float) -> None:
        cv, rng = self.cv, self.rng
        color = self.pick("static")
        width, height = (rng.uniform(0.5, 0.8), rng.uniform(0.8, 1.1)) if rng.random() < 0.6 else (0.15, 0.9)
        self.objects.append(
            (z, lambda: cv.paint(cv.front(x - width / 2, x + width / 2, 0.0, height, z), STATIC, color))
        )

    def add_pole(self, side: int, x: float, z: float) -> None:
        rng, cv = self.rng, self.cv
        kind = rng.choice(3, p=(0.35, 0.45, 0.2))  # street lamp, sign post, traffic light
        height = rng.uniform(6.0, 9.0) if kind == 0 else rng.uniform(2.6, 4.0)
        thick = rng.uniform(0.12, 0.22)
        color = self.pick("pole")
        signs = [(self.pick("sign"), rng.integers(4), rng.uniform(0.5, 0.8)) for _ in range(1 + (rng.random() < 0.3))]
        light = (self.pick("light"), rng.integers(3), [self.pick("lamp", 0.0) for _ in range(3)])

        def draw() -> None:
            cv.paint(cv.front(x - thick / 2, x + thick / 2, 0.0, height, z), POLE, color)
            if kind == 0:  # a lamp arm reaching over the road
                arm = x - side * 1.6
                cv.paint(cv.front(min(x, arm), max(x, arm), height - 0.15, height, z), POLE, color)
                cv.paint(
                    cv.front(min(arm, arm - side * 0.5), max(arm, arm - side * 0.5), height - 0.3, height, z),
                    POLE,
                    color * 0.8,
                )
            elif kind == 1:
                top = height
                for sign_color, shape, size in signs:
                    self._sign(x, top - size / 2, z - 0.02, size, shape, sign_color)
                    top -= size + 0.1
            else:
                self._light(x, height, z - 0.02, *light)

        self.objects.append((z, draw))

    def add_traffic_light_pole(self, side: int, x: float, z: float, overhead: bool = True) -> None:
        rng, cv = self.rng, self.cv
        height, color = rng.uniform(3.5, 5.5), self.pick("pole")
        light = (self.pick("light"), rng.integers(3), [self.pick("lamp", 0.0) for _ in range(3)])
        reach = rng.uniform(2.0, 4.5)

        def draw() -> None:
            cv.paint(cv.front(x - 0.1, x + 0.1, 0.0, height, z), POLE, color)
            self._light(x, height - 0.3, z - 0.02, *light)
            if overhead:
                arm = x - side * reach
                cv.paint(cv.front(min(x, arm), max(x, arm), height + 0.5, height + 0.65, z), POLE, color)
                self._light(arm, height + 0.5, z - 0.02, *light)

        self.objects.append((z, draw))

    def _light(self, x: float, top: float, z: float, housing, lit: int, lamps) -> None:
        cv = self.cv
        w, h = 0.34, 0.95
        cv.paint(cv.front(x - w / 2, x + w / 2, top - h, top, z), LIGHT, housing)
        for i in range(3):
            color = lamps[i] if i == lit else lamps[i] * 0.25
            cv.paint(cv.blob(x, top - 0.17 - 0.3 * i, z - 0.01, 0.1, 0.1), LIGHT, color)

    def _sign(self, x: float, y: float, z: float, size: float, shape: int, color) -> None:
        cv = self.cv
        r = size / 2
        white = np.clip(color * 0.2 + 0.8, 0, 1)
        if shape == 0:  # round: coloured ring, white face
            cv.paint(cv.blob(x, y, z, r, r), SIGN, color)
            cv.tint(cv.blob(x, y, z, r * 0.65, r * 0.65), white)
        elif shape == 1:  # triangle
            cv.paint(cv.shape([(x - r, y - r * 0.8), (x + r, y - r * 0.8), (x, y + r)], z), SIGN, color)
            cv.tint(cv.shape([(x - r * 0.55, y - r * 0.55), (x + r * 0.55, y - r * 0.55), (x, y + r * 0.45)], z), white)
        elif shape == 2:  # diamond
            cv.paint(cv.shape([(x - r, y), (x, y - r), (x + r, y), (x, y + r)], z), SIGN, color)
        else:  # rectangular plate
            cv.paint(cv.front(x - r, x + r, y - r * 0.6, y + r * 0.6, z), SIGN, color)
            cv.tint(cv.front(x - r * 0.7, x + r * 0.7, y - r * 0.1, y + r * 0.1, z), white)


def _stroke(a: tuple[float, float], b: tuple[float, float], half_width: float) -> list[tuple[float, float]]:
    """A thin quadrilateral from a to b (a tube of a bicycle frame)."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    norm = math.hypot(dx, dy) or 1.0
    nx, ny = -dy / norm * half_width, dx / norm * half_width
    return [(a[0] + nx, a[1] + ny), (b[0] + nx, b[1] + ny), (b[0] - nx, b[1] - ny), (a[0] - nx, a[1] - ny)]
