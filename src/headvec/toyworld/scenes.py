"""Scenes of the toy world: up to four simple objects on a 3x3 grid, their relations, and their pixels.

Objects sit at the centres of grid cells, so a 48 px image with 16 px patches puts each object in exactly
one patch; nothing overlaps and a relation between two objects is read off their cells.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from PIL import Image, ImageDraw

SHAPES = ("square", "circle", "triangle", "cross")
PLURALS = {"square": "squares", "circle": "circles", "triangle": "triangles", "cross": "crosses"}
COLORS = ("red", "green", "blue", "yellow", "purple")
SIZES = ("small", "large")
GRID = 3
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")
RELATIONS = ("left of", "right of", "above", "below")
MAX_OBJECTS = 4

RGB = {
    "red": (230, 30, 30),
    "green": (30, 190, 50),
    "blue": (40, 90, 255),
    "yellow": (250, 220, 20),
    "purple": (170, 50, 220),
}
BACKGROUND = (0, 0, 0)
# half the extent of a shape, as a fraction of a grid cell
RADIUS = {"small": 0.22, "large": 0.38}
TEST_FRACTION = 10  # one scene in ten (by its key's hash) belongs to the held-out test split

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Obj:
    """One object: what it is and which grid cell it sits in."""

    shape: str
    color: str
    size: str
    row: int
    col: int

    def __post_init__(self) -> None:
        for value, allowed in ((self.shape, SHAPES), (self.color, COLORS), (self.size, SIZES)):
            if value not in allowed:
                raise ValueError(f"{value!r} is not one of {allowed}")
        if not (0 <= self.row < GRID and 0 <= self.col < GRID):
            raise ValueError(f"cell ({self.row}, {self.col}) is off the {GRID}x{GRID} grid")

    @property
    def position(self) -> str:
        """Where it is in words, e.g. ``top left``."""
        return f"{ROWS[self.row]} {COLUMNS[self.col]}"


OBJ_FIELDS = ("shape", "color", "size", "row", "col")


@dataclass(frozen=True, slots=True)
class Scene:
    """1-4 objects in reading order (row, then column), at most one per cell.

    A frozen dataclass rather than a pydantic model: generation builds (and discards) many of them, and
    pydantic models holding one still validate and serialise it.
    """

    objects: tuple[Obj, ...]

    def __post_init__(self) -> None:
        cells = [(o.row, o.col) for o in self.objects]
        if not 1 <= len(cells) <= MAX_OBJECTS:
            raise ValueError(f"a scene holds 1-{MAX_OBJECTS} objects, got {len(cells)}")
        if cells != sorted(set(cells)):
            raise ValueError(f"objects must be in reading order, one per cell: {cells}")

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        """Inverse of ``dataclasses.asdict`` (what the exported rows hold)."""
        return cls(tuple(Obj(**o) for o in data["objects"]))

    @property
    def key(self) -> str:
        """Canonical text of the scene: equal scenes, equal keys (used for dedupe and the split)."""
        return "|".join(f"{o.shape},{o.color},{o.size},{o.row},{o.col}" for o in self.objects)

    @property
    def digest(self) -> str:
        """A short stable hash of the key: the scene's image file name."""
        return hashlib.blake2b(self.key.encode(), digest_size=8).hexdigest()

    @property
    def split(self) -> str:
        """``test`` for a fixed tenth of all possible scenes, else ``train``: the splits never share one."""
        return "test" if int(self.digest, 16) % TEST_FRACTION == 0 else "train"

    def relations(self) -> list[tuple[int, str, int]]:
        """Every true ``(subject, relation, object)`` triple, both directions."""
        return [
            (i, rel, j)
            for i, a in enumerate(self.objects)
            for j, b in enumerate(self.objects)
            if i != j and (rel := relation(a, b)) is not None
        ]


def relation(a: Obj, b: Obj) -> str | None:
    """Where ``a`` is relative to ``b``: only same-row or same-column pairs relate (diagonals are vague)."""
    if a.row == b.row and a.col != b.col:
        return "left of" if a.col < b.col else "right of"
    if a.col == b.col and a.row != b.row:
        return "above" if a.row < b.row else "below"
    return None


def make_scene(rng: random.Random, specs: list[tuple[str, str, str]]) -> Scene:
    """Place ``(shape, color, size)`` objects in random distinct cells."""
    cells = sorted(rng.sample(range(GRID * GRID), len(specs)))
    objects = [
        Obj(shape=shape, color=color, size=size, row=cell // GRID, col=cell % GRID)
        for (shape, color, size), cell in zip(specs, cells, strict=True)
    ]
    return Scene(tuple(objects))


def sample_scene(rng: random.Random, n_objects: int | None = None) -> Scene:
    """A random scene whose objects all differ in (color, shape), so ``the red square`` names one object."""
    n = n_objects or rng.randint(1, MAX_OBJECTS)
    kinds = rng.sample([(s, c) for s in SHAPES for c in COLORS], n)
    return make_scene(rng, [(s, c, rng.choice(SIZES)) for s, c in kinds])


def sample_group(rng: random.Random, n_objects: int | None = None) -> Scene:
    """1-4 copies of one object: its color, shape, size and count are all unambiguous answers."""
    n = n_objects or rng.randint(1, MAX_OBJECTS)
    spec = (rng.choice(SHAPES), rng.choice(COLORS), rng.choice(SIZES))
    return make_scene(rng, [spec] * n)


def sample_in_split(
    rng: random.Random, split: str | None, build: Callable[[random.Random], tuple[Scene, T] | None]
) -> tuple[Scene, T]:
    """Call ``build`` until it returns a scene of ``split`` (None: any); it may return None to retry."""
    while True:
        result = build(rng)
        if result is not None and (split is None or result[0].split == split):
            return result


def render(scene: Scene, size: int = 48) -> Image.Image:
    """Draw the scene: crisp (no anti-aliasing) shapes on a black background, ``size`` x ``size`` RGB."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    cell = size / GRID
    for o in scene.objects:
        cx, cy = (o.col + 0.5) * cell - 0.5, (o.row + 0.5) * cell - 0.5
        r = RADIUS[o.size] * cell
        fill = RGB[o.color]
        # circles and triangles are drawn 10% larger, so all shapes of one size cover similar areas
        if o.shape == "square":
            draw.rectangle(_box(cx, cy, r), fill=fill)
        elif o.shape == "circle":
            draw.ellipse(_box(cx, cy, r * 1.1), fill=fill)
        elif o.shape == "triangle":
            t = r * 1.1
            draw.polygon(
                [(_px(cx), _px(cy - t)), (_px(cx + t), _px(cy + t)), (_px(cx - t), _px(cy + t))], fill=fill
            )
        else:
            t = max(1.0, r * 0.38)
            draw.rectangle(_box(cx, cy, r, t), fill=fill)
            draw.rectangle(_box(cx, cy, t, r), fill=fill)
    return image


def _box(cx: float, cy: float, rx: float, ry: float | None = None) -> tuple[int, int, int, int]:
    ry = rx if ry is None else ry
    return _px(cx - rx), _px(cy - ry), _px(cx + rx), _px(cy + ry)


def _px(x: float) -> int:
    return int(x + 0.5)
