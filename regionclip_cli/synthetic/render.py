"""Rendering one world image: a textured background and 1–6 coloured shapes with tight boxes.

Every image is drawn from its own RNG, seeded by (world seed, image index), so image i is the same
whether 10 or 10,000 images are generated, and images can be rendered in any order or process.
Rendering is split into a *layout* (plain data: what goes where) and *drawing* (pixels), so the
layout can be inspected or redrawn, e.g. without its objects.

Shapes are polygons in a unit frame (x right, y down, roughly [-1, 1]²), each a list of
(polygon, ink) strokes: ink 1 paints, ink 0 cuts a hole (ring, crescent). They are scaled,
stretched and rotated, then filled on a small mask; the box is the mask's extent, so it is tight
around the drawn pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from regionclip_cli.synthetic.categories import BACKGROUND_TINTS, OBJECT_COLOURS, WORLD_CATEGORIES

BACKGROUND_KINDS = ("noise", "stripes", "gradient", "checker", "blobs")
MIN_OBJECT_SIZE = 14.0  # pixels, longest box side (the default; worlds may ask for larger)
MAX_OBJECT_FRACTION = 0.5  # of the image side


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, stop: float, n: int = 48) -> np.ndarray:
    t = np.linspace(start, stop, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _regular(n: int, radius: float = 1.0, phase: float = -np.pi / 2) -> np.ndarray:
    return _arc(0, 0, radius, radius, phase, phase + 2 * np.pi, n + 1)[:-1]


def _star() -> np.ndarray:
    outer, inner = _regular(5, 1.0), _regular(5, 0.42, -np.pi / 2 + np.pi / 5)
    return np.stack([outer, inner], axis=1).reshape(-1, 2)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 80)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y + 2.5], axis=1) / 16.5


def _teardrop() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 64)
    return np.stack([0.7 * np.sin(t) * np.sin(t / 2) ** 1.3, -np.cos(t)], axis=1)


Strokes = tuple[tuple[np.ndarray, int], ...]

_CIRCLE = _arc(0, 0, 1, 1, 0, 2 * np.pi, 64)
SHAPES: dict[str, Strokes] = {
    "circle": ((_CIRCLE, 1),),
    "square": ((np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float), 1),),
    "triangle": ((_regular(3), 1),),
    "star": ((_star(), 1),),
    "heart": ((_heart(), 1),),
    "cross": ((np.array([[-.3, -1], [.3, -1], [.3, -.3], [1, -.3], [1, .3], [.3, .3], [.3, 1],
                         [-.3, 1], [-.3, .3], [-1, .3], [-1, -.3], [-.3, -.3]], float), 1),),
    "ring": ((_CIRCLE, 1), (_CIRCLE * 0.6, 0)),
    "diamond": ((np.array([[0, -1], [0.6, 0], [0, 1], [-0.6, 0]], float), 1),),
    "hexagon": ((_regular(6, phase=0), 1),),
    "arrow": ((np.array([[-1, -.25], [.2, -.25], [.2, -.65], [1, 0], [.2, .65], [.2, .25],
                         [-1, .25]], float), 1),),
    "crescent": ((_CIRCLE, 1), (_arc(0.45, -0.15, 0.85, 0.85, 0, 2 * np.pi, 64), 0)),
    "pentagon": ((_regular(5), 1),),
    "ellipse": ((_arc(0, 0, 1, 0.55, 0, 2 * np.pi, 64), 1),),
    "lightning bolt": ((np.array([[.15, -1], [.75, -1], [.25, -.15], [.7, -.15], [-.45, 1],
                                  [-.05, .1], [-.5, .1]], float), 1),),
    "semicircle": ((np.concatenate([_arc(0, 0.45, 1, 1, np.pi, 2 * np.pi, 40)]), 1),),
    "trapezoid": ((np.array([[-.5, -.6], [.5, -.6], [1, .6], [-1, .6]], float), 1),),
    "teardrop": ((_teardrop(), 1),),
    "flower": tuple((_arc(0.55 * np.cos(a), 0.55 * np.sin(a), 0.45, 0.45, 0, 2 * np.pi, 24), 1)
                    for a in np.linspace(0, 2 * np.pi, 7)[:-1]) + ((_arc(0, 0, .4, .4, 0, 2 * np.pi, 24), 1),),
    "cloud": ((_arc(-.45, .1, .45, .4, 0, 2 * np.pi, 32), 1), (_arc(.05, -.15, .55, .5, 0, 2 * np.pi, 32), 1),
              (_arc(.55, .15, .42, .35, 0, 2 * np.pi, 32), 1),
              (np.array([[-.45, .1], [.55, .1], [.55, .5], [-.45, .5]], float), 1)),
    "hourglass": ((np.array([[-.7, -1], [.7, -1], [.08, 0], [.7, 1], [-.7, 1], [-.08, 0]], float), 1),),
}
assert set(SHAPES) == {c.name for c in WORLD_CATEGORIES}


@dataclass(frozen=True)
class WorldObject:
    """One drawn shape: its category, colour name and tight box [x1, y1, x2, y2] in pixels."""

    category_id: int
    colour: str
    box: tuple[float, float, float, float]

    @property
    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


@dataclass(frozen=True)
class Background:
    kind: str  # one of BACKGROUND_KINDS
    tint: str  # a BACKGROUND_TINTS name
    params: tuple[float, ...]  # kind-specific: angles, periods, contrast


@dataclass(frozen=True)
class PlacedShape:
    """A shape ready to draw: its strokes in image pixels and its fill colour (RGB)."""

    category_id: int
    colour: str
    rgb: tuple[int, int, int]
    strokes: tuple[tuple[np.ndarray, int], ...]


@dataclass(frozen=True)
class Layout:
    size: int
    background: Background
    shapes: tuple[PlacedShape, ...]
    noise_seed: int


@dataclass(frozen=True)
class Scene:
    image: Image.Image
    objects: tuple[WorldObject, ...]
    background: Background


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The RNG of image `index` in world `seed`: independent of every other image."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def _sample_background(rng: np.random.Generator) -> Background:
    kind = BACKGROUND_KINDS[rng.integers(len(BACKGROUND_KINDS))]
    tint = list(BACKGROUND_TINTS)[rng.integers(len(BACKGROUND_TINTS))]
    params = (float(rng.uniform(0, np.pi)), float(rng.uniform(6, 28)), float(rng.uniform(12, 40)))
    return Background(kind, tint, params)


def _transformed(strokes: Strokes, half_size: float, aspect: float, angle: float) -> list[tuple[np.ndarray, int]]:
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, -s], [s, c]])
    scale = np.array([half_size * aspect, half_size / aspect])
    return [((poly * scale) @ rotation.T, ink) for poly, ink in strokes]


def _box_of(strokes: list[tuple[np.ndarray, int]]) -> np.ndarray:
    points = np.concatenate([poly for poly, ink in strokes if ink])
    return np.concatenate([points.min(0), points.max(0)])


def _overlap_fraction(box: np.ndarray, others: list[np.ndarray]) -> float:
    """Largest share of an earlier box that `box` would cover (later shapes are drawn on top)."""
    worst = 0.0
    for other in others:
        w = min(box[2], other[2]) - max(box[0], other[0])
        h = min(box[3], other[3]) - max(box[1], other[1])
        if w > 0 and h > 0:
            worst = max(worst, w * h / ((other[2] - other[0]) * (other[3] - other[1])))
    return worst


def sample_layout(rng: np.random.Generator, size: int, min_objects: int = 1, max_objects: int = 6,
                  min_object_size: float = MIN_OBJECT_SIZE) -> Layout:
    """Choose background and shapes. Sizes (longest box side) are log-uniform from
    `min_object_size` to half the image. Larger shapes come first so small ones are drawn on top;
    a shape that would hide more than 40% of an earlier one is moved, or dropped after 20 tries."""
    background = _sample_background(rng)
    count = int(rng.integers(min_objects, max_objects + 1))
    largest = max(min_object_size + 1, MAX_OBJECT_FRACTION * size)
    sizes = np.sort(np.exp(rng.uniform(np.log(min_object_size), np.log(largest), count)))[::-1]
    colours = list(OBJECT_COLOURS)
    shapes: list[PlacedShape] = []
    boxes: list[np.ndarray] = []
    for target in sizes:
        category = WORLD_CATEGORIES[rng.integers(len(WORLD_CATEGORIES))]
        colour = colours[rng.integers(len(colours))]
        jitter = rng.integers(-18, 19, 3)
        rgb = tuple(int(v) for v in np.clip(np.array(OBJECT_COLOURS[colour]) + jitter, 0, 255))
        strokes = _transformed(SHAPES[category.name], 1.0, float(rng.uniform(0.85, 1.18)),
                               float(rng.uniform(0, 2 * np.pi)))
        extent = _box_of(strokes)
        scale = target / max(extent[2] - extent[0], extent[3] - extent[1])
        strokes = [(poly * scale, ink) for poly, ink in strokes]
        extent = extent * scale
        for _ in range(20):
            offset = rng.uniform([-extent[0] + 1, -extent[1] + 1], [size - extent[2] - 1, size - extent[3] - 1])
            box = extent + np.tile(offset, 2)
            if _overlap_fraction(box, boxes) <= 0.4:
                boxes.append(box)
                placed = tuple((poly + offset, ink) for poly, ink in strokes)
                shapes.append(PlacedShape(category.id, colour, rgb, placed))
                break
    return Layout(size, background, tuple(shapes), int(rng.integers(2**31)))


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return xs, ys


def draw_background(background: Background, size: int, noise_seed: int) -> np.ndarray:
    """A (size, size, 3) uint8 texture: noise, stripes, gradient, checker or soft blobs."""
    angle, period, contrast = background.params
    xs, ys = _grid(size)
    rng = np.random.default_rng(noise_seed)
    kind = background.kind
    if kind in ("stripes", "gradient", "checker"):
        along = xs * np.float32(np.cos(angle)) + ys * np.float32(np.sin(angle))
    if kind == "stripes":
        pattern = np.sign(np.sin(along * np.float32(2 * np.pi / period)))
    elif kind == "gradient":
        pattern = along * np.float32(2.5 / size) - np.float32(1.25)
    elif kind == "checker":
        across = ys * np.float32(np.cos(angle)) - xs * np.float32(np.sin(angle))
        pattern = np.sign(np.sin(along * np.float32(np.pi / period)) * np.sin(across * np.float32(np.pi / period)))
    elif kind == "blobs":
        coarse = rng.standard_normal((6, 6)).astype(np.float32)
        pattern = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))
    else:
        pattern = rng.standard_normal((size, size), dtype=np.float32) * np.float32(0.8)
    grain = rng.integers(0, 13, (size, size, 1), dtype=np.uint8).astype(np.float32) - np.float32(6)
    tint = np.array(BACKGROUND_TINTS[background.tint], np.float32)
    pixels = tint + (np.float32(contrast) * pattern)[..., None] + grain
    return np.clip(pixels, 0, 255).astype(np.uint8)


def shape_mask(shape: PlacedShape) -> tuple[np.ndarray, tuple[int, int]]:
    """The filled mask of a shape on its own small canvas, and that canvas's top-left corner."""
    points = np.concatenate([poly for poly, _ in shape.strokes])
    x0, y0 = np.floor(points.min(0)).astype(int)
    x1, y1 = np.ceil(points.max(0)).astype(int) + 1
    canvas = Image.new("L", (x1 - x0, y1 - y0), 0)
    draw = ImageDraw.Draw(canvas)
    for poly, ink in shape.strokes:
        draw.polygon([(float(x - x0), float(y - y0)) for x, y in poly], fill=255 * ink)
    return np.asarray(canvas) > 0, (int(x0), int(y0))


def draw_layout(layout: Layout) -> tuple[Image.Image, tuple[WorldObject, ...]]:
    """Paint the layout; each object's box is the extent of its own filled pixels."""
    pixels = draw_background(layout.background, layout.size, layout.noise_seed)
    objects = []
    for shape in layout.shapes:
        mask, (x0, y0) = shape_mask(shape)
        h, w = mask.shape
        region = pixels[max(y0, 0):y0 + h, max(x0, 0):x0 + w]
        mask = mask[max(-y0, 0):max(-y0, 0) + region.shape[0], max(-x0, 0):max(-x0, 0) + region.shape[1]]
        region[mask] = shape.rgb
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        ox, oy = max(x0, 0), max(y0, 0)
        box = (float(ox + cols[0]), float(oy + rows[0]), float(ox + cols[-1] + 1), float(oy + rows[-1] + 1))
        objects.append(WorldObject(shape.category_id, shape.colour, box))
    return Image.fromarray(pixels), tuple(objects)


def render_scene(seed: int, index: int, size: int = 224, min_objects: int = 1, max_objects: int = 6,
                 min_object_size: float = MIN_OBJECT_SIZE) -> Scene:
    """Image `index` of world `seed`: the picture, its objects (drawing order) and background."""
    layout = sample_layout(image_rng(seed, index), size, min_objects, max_objects, min_object_size)
    image, objects = draw_layout(layout)
    return Scene(image, objects, layout.background)
