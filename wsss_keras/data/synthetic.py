"""A synthetic WSSS dataset in the PASCAL VOC layout, built around WSSS's two classic failures.

Each image holds one to three objects on a textured background; only the image-level labels
are meant for training, the label maps for scoring. Two kinds of class are traps on purpose:

* co-occurrence: a `boat` nearly always floats on a band of water and a `train` nearly always
  stands on rails. Water and rails are background (label 0) and rarely appear without their
  class, so a classifier may use them as evidence and its CAMs spill onto them.
* under-activation: an `aeroplane` and a `bus` are large plain bodies with one small
  distinctive part (a striped tail fin, a dotted destination board). Plain bodies of the same
  colour also appear as background clutter, so only the small part tells the class apart and a
  plain CAM lights that part and misses the body.

The other classes (car, person, dog, bird, bottle, sheep, cat, tvmonitor) are plain objects
with their own colour and texture. Generation is deterministic given the seed: each image has
its own random stream, seeded from (seed, split, index).

Images are square by default (`size=128`); `size` may also be "WxH", a comma list of several
sizes (the images cycle through them), or the shorthands "voc" and "coco" (their datasets'
common sizes), so that smoke runs meet odd sizes and aspect ratios as on real data.
`layout="coco"` writes a COCO-2014-layout folder (see `wsss_keras.data.coco`) with COCO's 80
classes: the classes with a drawer of their own use it (airplane, tv and the VOC names COCO
shares), every other class a simple shape with a colour and texture of its own.

`style` picks what makes the data hard (`STYLES`, described where the styles are drawn):
"flat" (the default, the drawings above), "photo" (small objects with photographic textures on
photographs, same traps) and "clutter" (thin articulated shapes among distractor strokes).
`present_classes` writes VOC's 21-class list with only some of its classes occurring, as real
subsets of VOC are; the label maps then use VOC's class indices.
"""

import colorsys
import functools
import json
import os
import shutil
import zlib
from xml.etree import ElementTree

import cv2
import numpy as np

from wsss_keras.data.classes import (
    CLASS_NAMES_FILE,
    COCO_CATEGORY_IDS,
    COCO_CLASSES,
    VOC_CLASSES,
    write_class_names,
)
from wsss_keras.data.imageio import IGNORE_INDEX, write_image, write_label_map
from wsss_keras.errors import DataError

GENERATOR_VERSION = 1

# The co-occurrence traps: (context, the class it comes with).
CONTEXTS = (("water", "boat"), ("rails", "train"))
# How often the context region appears with and without its class: P(context | class) and
# P(context | no class). The gap is what makes the context a shortcut for the classifier.
CONTEXT_WITH_CLASS = 0.95
CONTEXT_WITHOUT_CLASS = 0.06
# How often a plain body of an under-activation class's colour appears as background clutter.
DISTRACTOR_RATE = 0.45
# Objects per image of the flat style: (choices, probabilities).
FLAT_COUNTS = ([1, 2, 3], [0.45, 0.35, 0.2])

TRAP_CLASSES = {"boat": "co-occurrence", "train": "co-occurrence", "aeroplane": "under-activation", "bus": "under-activation"}
CATALOG = ("aeroplane", "boat", "car", "person", "train", "bus", "dog", "bird", "bottle", "sheep", "cat", "tvmonitor")
DEFAULT_CLASSES = 6
# COCO's names for the catalog classes it spells differently.
COCO_KINDS = {"airplane": "aeroplane", "tv": "tvmonitor"}

MIN_SIDE, MAX_SIDE = 32, 4096
# Common image sizes (width x height) of the real datasets, for `--size voc` / `--size coco`.
SIZE_SHORTHANDS = {
    "voc": ((500, 375), (375, 500), (500, 333), (333, 500), (500, 400), (486, 500), (500, 366), (353, 500)),
    "coco": ((640, 480), (480, 640), (640, 427), (427, 640), (640, 424), (612, 612), (500, 375), (640, 512)),
}


def parse_sizes(size):
    """Image sizes from `--size`: an int N (square N x N, returned as the int), "WxH", a comma
    list of several, or a shorthand ("voc", "coco"). Returns the int or a tuple of (width, height).
    """
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        if not MIN_SIDE <= size <= MAX_SIDE:
            raise DataError(f"--size {size}: image sides must be {MIN_SIDE}..{MAX_SIDE} pixels ({size}).")
        return int(size)
    if isinstance(size, (list, tuple)) and size and all(isinstance(item, (list, tuple)) for item in size):
        sizes = tuple((int(w), int(h)) for w, h in size)
        spec = ",".join(f"{w}x{h}" for w, h in sizes)
    else:
        spec = str(size).strip().lower()
        if spec.isdigit():
            return parse_sizes(int(spec))
        sizes = []
        for item in spec.split(","):
            item = item.strip()
            if item in SIZE_SHORTHANDS:
                sizes.extend(SIZE_SHORTHANDS[item])
                continue
            parts = item.split("x")
            if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
                raise DataError(
                    f"--size {size!r}: give a side (128), WxH (500x375), a comma list of them, or "
                    f"{' / '.join(SIZE_SHORTHANDS)}; {item!r} is none of these."
                )
            sizes.append((int(parts[0]), int(parts[1])))
        sizes = tuple(sizes)
    bad = [f"{w}x{h}" for w, h in sizes if not (MIN_SIDE <= w <= MAX_SIDE and MIN_SIDE <= h <= MAX_SIDE)]
    if bad:
        raise DataError(f"--size {spec}: image sides must be {MIN_SIDE}..{MAX_SIDE} pixels ({', '.join(bad)}).")
    return sizes


def _size_of(sizes, index):
    """(width, height) of image `index` of a split: `sizes` is an int (square) or cycled through."""
    if isinstance(sizes, int):
        return sizes, sizes
    return sizes[index % len(sizes)]


def resolve_classes(classes):
    """Class names (without background) from a count or a comma-separated list of catalog names."""
    return _count_or_names(classes, "--classes", CATALOG, CATALOG, f"a comma-separated list of {', '.join(CATALOG)}",
                           f"distinct names from: {', '.join(CATALOG)}")


def _count_or_names(value, option, order, allowed, list_hint, names_hint):
    """`value` as class names: a count (the first N of `order`) or distinct comma-separated names
    from `allowed`; anything else raises a DataError naming `option` and the hints."""
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        count = int(value)
        if not 1 <= count <= len(order):
            raise DataError(f"{option} {count}: choose 1..{len(order)} classes, or {list_hint}.")
        return tuple(order[:count])
    names = tuple(name.strip() for name in str(value).split(",") if name.strip())
    unknown = [name for name in names if name not in allowed]
    if unknown or not names or len(set(names)) != len(names):
        raise DataError(
            f"{option} {value!r}: give a count or {names_hint}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    return names


# --------------------------------------------------------------------------------------
# Drawing helpers. Every part is a boolean mask plus a texture; the image takes the texture
# inside the mask and the label map takes the class, so image and labels align exactly.


def _jitter_colour(rng, rgb, amount=18):
    return np.clip(np.asarray(rgb, dtype=np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


def _flat(shape, rgb):
    return np.broadcast_to(np.asarray(rgb, dtype=np.float32), shape + (3,))


def _stripes(shape, rgb_a, rgb_b, period, angle, phase=0.0):
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    coordinate = xs * np.cos(angle) + ys * np.sin(angle) + phase
    select = (np.floor(coordinate / period) % 2 == 0)[..., None]
    return np.where(select, np.asarray(rgb_a, np.float32), np.asarray(rgb_b, np.float32))


def _dots(shape, rgb_base, rgb_dot, period, radius):
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    dy = (ys % period) - period / 2
    dx = (xs % period) - period / 2
    select = ((dx * dx + dy * dy) <= radius * radius)[..., None]
    return np.where(select, np.asarray(rgb_dot, np.float32), np.asarray(rgb_base, np.float32))


def _spots(rng, shape, rgb_base, rgb_spot, count, radius):
    texture = np.empty(shape + (3,), np.float32)
    texture[:] = np.asarray(rgb_base, np.float32)
    for _ in range(count):
        centre = (int(rng.integers(0, shape[1])), int(rng.integers(0, shape[0])))
        cv2.circle(texture, centre, int(radius * rng.uniform(0.6, 1.3)), tuple(float(c) for c in rgb_spot), -1)
    return texture


def _poly(shape, points):
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(np.asarray(points)).astype(np.int32)], 1)
    return mask.astype(bool)


def _ellipse(shape, centre, axes, angle=0.0):
    mask = np.zeros(shape, np.uint8)
    centre = (round(centre[0]), round(centre[1]))
    axes = (max(1, round(axes[0])), max(1, round(axes[1])))
    cv2.ellipse(mask, centre, axes, angle, 0, 360, 1, -1)
    return mask.astype(bool)


def _rect(shape, x0, y0, x1, y1):
    mask = np.zeros(shape, bool)
    mask[max(0, int(y0)) : max(0, int(y1)), max(0, int(x0)) : max(0, int(x1))] = True
    return mask


class _Canvas:
    """The image and label map being drawn, plus the bounding boxes of the objects."""

    def __init__(self, image, label_map):
        self.image, self.label_map = image, label_map
        self.shape = label_map.shape

    def paint(self, mask, texture, label):
        self.image[mask] = texture[mask] if texture.ndim == 3 else texture
        self.label_map[mask] = label


# Each drawer paints one object of its class with its top-left at (x, y) and its width `w`,
# returns the object's mask. `ground` is the y of the water line or rails when present.


def _draw_aeroplane(rng, canvas, label, x, y, w, flip):
    h, s = canvas.shape, w
    body = _jitter_colour(rng, (196, 198, 204), 6)
    cx, cy = x + s * 0.5, y + s * 0.3
    fuselage = _ellipse(h, (cx, cy), (s * 0.5, s * 0.11))
    wing = _poly(h, [(cx - s * 0.08, cy), (cx + s * 0.12, cy), (cx - s * 0.05, cy + s * 0.32), (cx - s * 0.22, cy + s * 0.32)])
    wing_top = _poly(h, [(cx - s * 0.08, cy), (cx + s * 0.1, cy), (cx - s * 0.08, cy - s * 0.2), (cx - s * 0.2, cy - s * 0.2)])
    tail_x = x + (s * 0.95 if flip else s * 0.05)
    direction = -1 if flip else 1
    tail = _poly(h, [(tail_x, cy - s * 0.02), (tail_x + direction * s * 0.2, cy - s * 0.02), (tail_x, cy - s * 0.25)])
    plain = fuselage | wing | wing_top
    canvas.paint(plain, _flat(h, body), label)
    fin = _stripes(h, (210, 30, 40), (245, 245, 245), max(2.0, s * 0.035), 0.0)
    canvas.paint(tail, fin, label)
    return plain | tail


def _draw_bus(rng, canvas, label, x, y, w, flip, ground=None):
    h, s = canvas.shape, w
    body_colour = _jitter_colour(rng, (228, 186, 40), 8)
    height = s * 0.42
    top = (ground - height) if ground is not None else y
    body = _rect(h, x, top, x + s, top + height)
    board_x0 = x + (s * 0.04 if flip else s * 0.78)
    board = _rect(h, board_x0, top + height * 0.08, board_x0 + s * 0.18, top + height * 0.34)
    canvas.paint(body, _flat(h, body_colour), label)
    canvas.paint(board, _dots(h, (20, 20, 24), (250, 250, 120), max(3.0, s * 0.05), max(1.0, s * 0.014)), label)
    return body | board


def _draw_boat(rng, canvas, label, x, y, w, flip, ground=None):
    h, s = canvas.shape, w
    water_line = ground if ground is not None else y + s * 0.7
    hull = _poly(h, [(x, water_line - s * 0.16), (x + s, water_line - s * 0.16), (x + s * 0.82, water_line + s * 0.05), (x + s * 0.18, water_line + s * 0.05)])
    mast_x = x + s * 0.5
    sail = _poly(h, [(mast_x, water_line - s * 0.8), (mast_x, water_line - s * 0.18), (mast_x + (-1 if flip else 1) * s * 0.42, water_line - s * 0.18)])
    canvas.paint(hull, _stripes(h, _jitter_colour(rng, (120, 60, 25), 10), (70, 35, 15), max(2.0, s * 0.06), np.pi / 2), label)
    canvas.paint(sail, _flat(h, _jitter_colour(rng, (250, 246, 236), 4)), label)
    return hull | sail


def _draw_train(rng, canvas, label, x, y, w, flip, ground=None):
    h, s = canvas.shape, w
    base = ground if ground is not None else y + s * 0.5
    height = s * 0.34
    body = _rect(h, x, base - height, x + s, base - s * 0.04)
    canvas.paint(body, _stripes(h, _jitter_colour(rng, (40, 90, 170), 10), (230, 230, 230), max(2.0, s * 0.08), np.pi / 2), label)
    windows = np.zeros(h, bool)
    for k in range(4):
        wx = x + s * (0.08 + 0.23 * k)
        windows |= _rect(h, wx, base - height * 0.85, wx + s * 0.12, base - height * 0.5)
    canvas.paint(windows, _flat(h, (30, 35, 45)), label)
    return body


def _draw_car(rng, canvas, label, x, y, w, flip):
    h, s = canvas.shape, w
    colour = _jitter_colour(rng, (200, 30, 35), 15)
    body = _rect(h, x, y + s * 0.2, x + s, y + s * 0.42)
    cabin = _poly(h, [(x + s * 0.22, y + s * 0.2), (x + s * 0.3, y), (x + s * 0.7, y), (x + s * 0.8, y + s * 0.2)])
    canvas.paint(body | cabin, _flat(h, colour), label)
    glass = _poly(h, [(x + s * 0.33, y + s * 0.17), (x + s * 0.36, y + s * 0.04), (x + s * 0.66, y + s * 0.04), (x + s * 0.72, y + s * 0.17)])
    canvas.paint(glass, _flat(h, (150, 200, 230)), label)
    wheels = _ellipse(h, (x + s * 0.22, y + s * 0.43), (s * 0.1, s * 0.1)) | _ellipse(h, (x + s * 0.78, y + s * 0.43), (s * 0.1, s * 0.1))
    canvas.paint(wheels, _flat(h, (25, 25, 25)), label)
    return body | cabin | wheels


def _draw_person(rng, canvas, label, x, y, w, flip):
    h, s = canvas.shape, w * 0.6
    cx = x + s * 0.5
    head = _ellipse(h, (cx, y + s * 0.2), (s * 0.2, s * 0.2))
    torso = _rect(h, cx - s * 0.3, y + s * 0.4, cx + s * 0.3, y + s * 1.2)
    legs = _rect(h, cx - s * 0.25, y + s * 1.2, cx - s * 0.05, y + s * 1.8) | _rect(h, cx + s * 0.05, y + s * 1.2, cx + s * 0.25, y + s * 1.8)
    canvas.paint(head, _flat(h, _jitter_colour(rng, (232, 185, 150), 10)), label)
    canvas.paint(torso, _stripes(h, _jitter_colour(rng, (40, 150, 70), 10), (235, 235, 235), max(2.0, s * 0.12), np.pi / 2), label)
    canvas.paint(legs, _flat(h, (45, 50, 90)), label)
    return head | torso | legs


def _draw_dog(rng, canvas, label, x, y, w, flip):
    h, s = canvas.shape, w
    body = _ellipse(h, (x + s * 0.5, y + s * 0.35), (s * 0.35, s * 0.16))
    head = _ellipse(h, (x + (s * 0.1 if flip else s * 0.88), y + s * 0.2), (s * 0.12, s * 0.11))
    legs = np.zeros(h, bool)
    for k in (0.25, 0.4, 0.6, 0.75):
        legs |= _rect(h, x + s * k - s * 0.03, y + s * 0.4, x + s * k + s * 0.03, y + s * 0.62)
    shape = body | head | legs
    canvas.paint(shape, _spots(rng, h, _jitter_colour(rng, (170, 110, 60), 10), (60, 35, 20), 14, max(1.5, s * 0.05)), label)
    return shape


def _draw_bird(rng, canvas, label, x, y, w, flip):
    h, s = canvas.shape, w * 0.7
    body = _ellipse(h, (x + s * 0.5, y + s * 0.5), (s * 0.32, s * 0.22))
    direction = -1 if flip else 1
    beak_x = x + s * 0.5 + direction * s * 0.3
    beak = _poly(h, [(beak_x, y + s * 0.42), (beak_x + direction * s * 0.2, y + s * 0.5), (beak_x, y + s * 0.56)])
    canvas.paint(body, _stripes(h, _jitter_colour(rng, (240, 140, 30), 10), (250, 200, 60), max(2.0, s * 0.07), np.pi / 4), label)
    canvas.paint(beak, _flat(h, (20, 20, 20)), label)
    return body | beak


def _draw_bottle(rng, canvas, label, x, y, w, flip):
    h, s = canvas.shape, w * 0.45
    body = _rect(h, x, y + s * 0.6, x + s * 0.5, y + s * 1.8)
    neck = _rect(h, x + s * 0.17, y + s * 0.15, x + s * 0.33, y + s * 0.6)
    canvas.paint(body | neck, _flat(h, _jitter_colour(rng, (30, 120, 60), 10)), label)
    band = _rect(h, x, y + s * 0.95, x + s * 0.5, y + s * 1.3)
    canvas.paint(band, _stripes(h, (240, 230, 200), (200, 40, 40), max(2.0, s * 0.08), 0.0), label)
    return body | neck


def _draw_sheep(rng, canvas, label, x, y, w, flip):
    h, s = canvas.shape, w
    wool = np.zeros(h, bool)
    for _ in range(7):
        wool |= _ellipse(h, (x + s * rng.uniform(0.25, 0.75), y + s * rng.uniform(0.25, 0.45)), (s * 0.14, s * 0.12))
    head = _ellipse(h, (x + (s * 0.12 if flip else s * 0.88), y + s * 0.32), (s * 0.08, s * 0.1))
    canvas.paint(wool, _dots(h, (238, 238, 230), (205, 205, 195), max(3.0, s * 0.07), max(1.0, s * 0.02)), label)
    canvas.paint(head, _flat(h, (40, 40, 40)), label)
    return wool | head


def _draw_cat(rng, canvas, label, x, y, w, flip):
    h, s = canvas.shape, w * 0.7
    body = _ellipse(h, (x + s * 0.5, y + s * 0.62), (s * 0.3, s * 0.26))
    head = _ellipse(h, (x + s * 0.5, y + s * 0.25), (s * 0.18, s * 0.16))
    ears = _poly(h, [(x + s * 0.33, y + s * 0.18), (x + s * 0.36, y), (x + s * 0.46, y + s * 0.12)]) | _poly(
        h, [(x + s * 0.67, y + s * 0.18), (x + s * 0.64, y), (x + s * 0.54, y + s * 0.12)]
    )
    shape = body | head | ears
    canvas.paint(shape, _stripes(h, _jitter_colour(rng, (130, 130, 140), 8), (60, 60, 70), max(2.0, s * 0.07), 0.3), label)
    return shape


def _draw_tvmonitor(rng, canvas, label, x, y, w, flip):
    h, s = canvas.shape, w * 0.8
    frame = _rect(h, x, y, x + s, y + s * 0.65)
    screen = _rect(h, x + s * 0.06, y + s * 0.06, x + s * 0.94, y + s * 0.59)
    stand = _rect(h, x + s * 0.42, y + s * 0.65, x + s * 0.58, y + s * 0.8)
    canvas.paint(frame | stand, _flat(h, (25, 25, 30)), label)
    canvas.paint(screen, _stripes(h, (40, 90, 230), (90, 160, 250), max(2.0, s * 0.05), 0.0), label)
    return frame | stand


DRAWERS = {
    "aeroplane": _draw_aeroplane, "boat": _draw_boat, "car": _draw_car, "person": _draw_person,
    "train": _draw_train, "bus": _draw_bus, "dog": _draw_dog, "bird": _draw_bird,
    "bottle": _draw_bottle, "sheep": _draw_sheep, "cat": _draw_cat, "tvmonitor": _draw_tvmonitor,
}  # fmt: skip
# Width of each class's object as a fraction of the image side: the under-activation classes
# are large, the co-occurrence classes small next to their context.
SIZE_RANGE = {"aeroplane": (0.6, 0.9), "bus": (0.55, 0.85), "boat": (0.32, 0.5), "train": (0.55, 0.85)}
DEFAULT_SIZE_RANGE = (0.35, 0.6)
GROUNDED = {"boat", "train", "bus"}


def _background(rng, width, height):
    top, bottom = rng.uniform(60, 200, 3), rng.uniform(60, 200, 3)
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    image = top * (1 - ramp) + bottom * ramp
    image = np.broadcast_to(image, (height, width, 3)).copy()
    image += rng.normal(0, 6, (height, width, 3)).astype(np.float32)
    size = min(width, height)  # the scale of the clutter
    for _ in range(int(rng.integers(2, 6))):  # muted clutter that belongs to no class
        colour = tuple(float(c) for c in rng.uniform(70, 170, 3))
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        if rng.random() < 0.5:
            cv2.circle(image, centre, int(rng.integers(size // 24 + 1, size // 8 + 2)), colour, -1)
        else:
            half = int(rng.integers(size // 24 + 1, size // 8 + 2))
            cv2.rectangle(image, (centre[0] - half, centre[1] - half // 2), (centre[0] + half, centre[1] + half // 2), colour, -1)
    return image


def _paint_water(rng, canvas, line):
    height, width = canvas.shape
    size = min(width, height)
    band = _rect(canvas.shape, 0, line, width, height)
    waves = _stripes(canvas.shape, _jitter_colour(rng, (40, 100, 190), 10), (90, 150, 220), max(2.0, size / 28), np.pi / 2 + 0.15, rng.uniform(0, 10))
    canvas.paint(band, waves, 0)


def _paint_rails(rng, canvas, line):
    width = canvas.shape[1]
    size = min(canvas.shape)
    bed = _rect(canvas.shape, 0, line - size * 0.02, width, line + size * 0.09)
    sleepers = _stripes(canvas.shape, (110, 80, 50), (150, 140, 125), max(2.0, size / 20), 0.0)
    canvas.paint(bed, sleepers, 0)
    for offset in (0.0, 0.06):
        canvas.paint(_rect(canvas.shape, 0, line + size * offset, width, line + size * offset + max(1, size * 0.012)), _flat(canvas.shape, (60, 60, 66)), 0)


def _paint_distractor(rng, canvas, kind):
    """A plain body of an under-activation class's colour, as background."""
    height, width = canvas.shape
    s = min(width, height) * rng.uniform(0.25, 0.5)
    x, y = rng.uniform(-0.1, 0.9) * width, rng.uniform(0.0, 0.8) * height
    if kind == "aeroplane":
        mask = _ellipse(canvas.shape, (x, y), (s * 0.5, s * rng.uniform(0.09, 0.3)), rng.uniform(-20, 20))
        colour = (196, 198, 204)
    else:
        mask = _rect(canvas.shape, x, y, x + s, y + s * 0.42)
        colour = (228, 186, 40)
    canvas.paint(mask, _flat(canvas.shape, _jitter_colour(rng, colour, 8)), 0)


def _generic_drawer(class_index):
    """A drawer for a class without one of its own: a simple shape, colour and texture that
    depend only on `class_index`, so each class looks alike across images and unlike the others."""
    hue = (class_index * 0.618034) % 1.0
    base = tuple(255 * c for c in colorsys.hsv_to_rgb(hue, 0.55 + 0.4 * ((class_index * 7) % 5) / 4, 0.75 + 0.2 * (class_index % 3) / 2))
    second = tuple(255 * c for c in colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.8, 0.35 + 0.3 * (class_index % 2)))
    shape_kind = class_index % 7
    texture_kind = (class_index // 7) % 4
    angle = (class_index % 5) * np.pi / 5

    def draw(rng, canvas, label, x, y, w, flip):
        h, s = canvas.shape, w * 0.8
        if shape_kind == 0:  # round
            mask = _ellipse(h, (x + s * 0.5, y + s * 0.4), (s * 0.4, s * 0.4))
        elif shape_kind == 1:  # flat box
            mask = _rect(h, x, y + s * 0.2, x + s, y + s * 0.65)
        elif shape_kind == 2:  # upright box
            mask = _rect(h, x + s * 0.25, y, x + s * 0.65, y + s * 1.1)
        elif shape_kind == 3:  # triangle
            mask = _poly(h, [(x + s * 0.5, y), (x + s, y + s * 0.85), (x, y + s * 0.85)])
        elif shape_kind == 4:  # diamond
            mask = _poly(h, [(x + s * 0.5, y), (x + s * 0.9, y + s * 0.45), (x + s * 0.5, y + s * 0.9), (x + s * 0.1, y + s * 0.45)])
        elif shape_kind == 5:  # plus
            mask = _rect(h, x + s * 0.35, y, x + s * 0.65, y + s) | _rect(h, x, y + s * 0.35, x + s, y + s * 0.65)
        else:  # long ellipse
            mask = _ellipse(h, (x + s * 0.5, y + s * 0.35), (s * 0.55, s * 0.18), -20.0 if flip else 20.0)
        colour = _jitter_colour(rng, base, 10)
        if texture_kind == 0:
            texture = _flat(h, colour)
        elif texture_kind == 1:
            texture = _stripes(h, colour, second, max(2.0, s * 0.07), angle)
        elif texture_kind == 2:
            texture = _dots(h, colour, second, max(3.0, s * 0.08), max(1.0, s * 0.02))
        else:
            texture = _spots(rng, h, colour, second, 10, max(1.5, s * 0.05))
        canvas.paint(mask, texture, label)
        return mask

    return draw


def render_sample(rng, size, class_names, void_border=1, counts=None, kinds=None):
    """Draw one image.

    Args:
        size: the side of a square image, or (width, height).
        class_names: the classes to draw from (without background); label k is class_names[k - 1].
        void_border: width of the 255 band along class boundaries (0: none).
        counts: optional (choices, probabilities) for the number of objects; default 1..3.
        kinds: optional {class name: catalog name} for classes drawn by a catalog drawer under
            another name; classes neither in the catalog nor in `kinds` get a generic drawer.

    Returns:
        (image uint8 HxWx3, label map uint8 HxW, objects [(name, (xmin, ymin, xmax, ymax))], context dict).
    """
    width, height = (size, size) if np.isscalar(size) else (int(size[0]), int(size[1]))
    side = min(width, height)  # the scale of the objects and the context
    kind_of, present_kinds, chosen, chosen_kinds = _choose_objects(rng, class_names, kinds, counts or FLAT_COUNTS)
    label_map = np.zeros((height, width), np.uint8)
    canvas = _Canvas(_background(rng, width, height), label_map)
    context = {}
    for kind in ("aeroplane", "bus"):
        if kind in present_kinds and rng.random() < DISTRACTOR_RATE:
            _paint_distractor(rng, canvas, kind)
            context[f"{kind}_distractor"] = True
    ground = height * rng.uniform(0.55, 0.75)
    _paint_contexts(rng, canvas, ground, present_kinds, chosen_kinds, context)
    objects = []
    index_of = {name: position + 1 for position, name in enumerate(class_names)}
    for name in chosen:
        kind = kind_of[name]
        low, high = SIZE_RANGE.get(kind, DEFAULT_SIZE_RANGE)
        object_width = side * rng.uniform(low, high)
        x = rng.uniform(-0.1 * object_width, width - 0.9 * object_width)
        y = rng.uniform(0.02 * height, max(0.03 * height, height * 0.85 - object_width * 0.5))
        flip = bool(rng.random() < 0.5)
        drawer = DRAWERS.get(kind) or _generic_drawer(index_of[name])
        grounded = kind in GROUNDED and (context.get("water") if kind == "boat" else context.get("rails") if kind == "train" else True)
        if kind in GROUNDED:
            mask = drawer(rng, canvas, index_of[name], x, y, object_width, flip, ground=ground if grounded else None)
        else:
            mask = drawer(rng, canvas, index_of[name], x, y, object_width, flip)
        visible = mask & (label_map == index_of[name])
        if visible.any():
            ys, xs = np.nonzero(visible)
            objects.append((name, (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1)))
    # A later object may hide an earlier one completely; the labels follow what is visible.
    present = {class_names[v - 1] for v in np.unique(label_map) if v > 0}
    objects = [obj for obj in objects if obj[0] in present]
    if void_border > 0:
        label_map = _add_void_border(label_map, void_border)
    image = np.clip(canvas.image, 0, 255).astype(np.uint8)
    return image, label_map, objects, context


def _add_void_border(label_map, width):
    """Mark a band of `width` pixels along class boundaries as 255, as VOC's annotations do."""
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    high = cv2.dilate(label_map, kernel)
    low = cv2.erode(label_map, kernel)
    edge = (high != low) & (label_map != 0) | ((high != label_map) & (label_map == 0))
    out = label_map.copy()
    out[edge] = IGNORE_INDEX
    return out


def _annotation_xml(name, width, height, objects):
    root = ElementTree.Element("annotation")
    ElementTree.SubElement(root, "folder").text = "SYNTH"
    ElementTree.SubElement(root, "filename").text = f"{name}.jpg"
    size_node = ElementTree.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ElementTree.SubElement(size_node, tag).text = str(value)
    ElementTree.SubElement(root, "segmented").text = "1"
    for class_name, (x0, y0, x1, y1) in objects:
        node = ElementTree.SubElement(root, "object")
        ElementTree.SubElement(node, "name").text = class_name
        ElementTree.SubElement(node, "pose").text = "Unspecified"
        ElementTree.SubElement(node, "truncated").text = "0"
        ElementTree.SubElement(node, "difficult").text = "0"
        box = ElementTree.SubElement(node, "bndbox")
        for tag, value in (("xmin", x0), ("ymin", y0), ("xmax", x1), ("ymax", y1)):
            ElementTree.SubElement(box, tag).text = str(value)
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="unicode")


def resolve_present_classes(present):
    """The VOC classes that `--present-classes` lets occur: a count (the catalog's first N, then
    VOC's other classes in VOC order) or a comma-separated list of VOC names; in VOC order."""
    voc = VOC_CLASSES[1:]
    order = CATALOG + tuple(name for name in voc if name not in CATALOG)
    names = _count_or_names(present, "--present-classes", order, voc, "a comma-separated list of VOC names",
                            f"distinct VOC class names: {', '.join(voc)}")
    return tuple(sorted(names, key=voc.index))


def generate(
    out, classes=None, size=128, n_train=600, n_val=150, seed=0, overwrite=False, progress=None, layout="voc", style="flat",
    present_classes=None,
):  # fmt: skip
    """Write a synthetic dataset in the VOC layout (or COCO's) under `out`.

    Args:
        out: folder to create (it must be empty or absent, unless `overwrite`).
        classes: a class count (the first N of the catalog; the default 6 include all four
            trap classes) or a comma-separated list of catalog names. VOC layout only: the
            COCO layout always has COCO's 80 classes.
        size: image side in pixels (square images), or (see `parse_sizes`) "WxH", a comma list
            of sizes that the images of each split cycle through, or "voc" / "coco".
        n_train, n_val: number of training and validation images.
        seed: the seed; the same arguments always give the same files.
        overwrite: replace an existing non-empty folder.
        progress: optional callable(done, total).
        layout: "voc" (splits train, train_aug, val) or "coco" (train2014, val2014, with
            instances JSONs as `wsss_keras.data.coco` reads them).
        style: what makes the data hard (see STYLES): "flat" (drawn objects with built-in
            traps), "photo" (small objects with photographic textures on photographs) or
            "clutter" (thin articulated shapes among distractor strokes).
        present_classes: VOC layout only, instead of `classes`: write VOC's 21 classes with only
            these occurring (a count or a comma-separated list of VOC names, see
            `resolve_present_classes`); masks use VOC's class indices.

    Returns:
        a dict of what was written (also saved as `synthetic.json`).

    Example:
    >>> from wsss_keras.data.synthetic import generate
    >>> info = generate("/tmp/synth", n_train=8, n_val=4, overwrite=True)
    >>> info["splits"]["train"]
    8
    """
    if layout not in ("voc", "coco"):
        raise DataError(f"--layout {layout!r}: choose voc or coco.")
    if style not in STYLES:
        raise DataError(f"--style {style!r}: choose one of {', '.join(STYLES)}.")
    if layout == "coco" and (classes is not None or present_classes is not None):
        raise DataError("--classes / --present-classes: the COCO layout always has COCO's 80 classes; leave them out.")
    if classes is not None and present_classes is not None:
        raise DataError("--classes and --present-classes: give one (--present-classes keeps VOC's 21-class list).")
    present = resolve_present_classes(present_classes) if present_classes is not None else None
    if present is not None:
        class_names = VOC_CLASSES[1:]
    else:
        class_names = resolve_classes(DEFAULT_CLASSES if classes is None else classes) if layout == "voc" else COCO_CLASSES[1:]
    sizes = parse_sizes(size)
    if n_train < 1 or n_val < 1:
        raise DataError(f"--n-train {n_train} / --n-val {n_val}: each split needs at least one image.")
    if os.path.isdir(out) and os.listdir(out):
        if not overwrite:
            raise DataError(f"{out}: folder exists and is not empty; choose another folder or pass --overwrite.")
        shutil.rmtree(out)
    if layout == "coco":
        return _generate_coco(out, class_names, sizes, n_train, n_val, seed, progress, style)
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "Annotations", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(out, folder), exist_ok=True)
    all_names = ("background",) + tuple(class_names)
    renderer = RENDERERS[style]
    drawn = present if present is not None else tuple(class_names)
    # The renderer labels the drawn classes 1..K; with a subset, map those to VOC's indices.
    lut = None
    if present is not None:
        lut = np.arange(256, dtype=np.uint8)
        lut[1 : len(present) + 1] = [VOC_CLASSES.index(name) for name in present]
    write_class_names(os.path.join(out, CLASS_NAMES_FILE), all_names)

    splits = {"train": [f"train_{i:05d}" for i in range(n_train)], "val": [f"val_{i:05d}" for i in range(n_val)]}
    cls_labels, context_counts, total, done = {}, {}, n_train + n_val, 0
    for split_id, (split, names) in enumerate(splits.items()):
        for index, name in enumerate(names):
            rng = np.random.default_rng([seed, split_id, index])
            width, height = _size_of(sizes, index)
            image, label_map, objects, context = renderer(rng, (width, height), drawn)
            if lut is not None:
                label_map = lut[label_map]
            write_image(os.path.join(out, "JPEGImages", f"{name}.jpg"), image, quality=92)
            for folder in ("SegmentationClass", "SegmentationClassAug"):
                write_label_map(os.path.join(out, folder, f"{name}.png"), label_map)
            with open(os.path.join(out, "Annotations", f"{name}.xml"), "w", encoding="utf-8") as handle:
                handle.write(_annotation_xml(name, width, height, objects))
            vector = np.zeros(len(class_names), np.float32)
            for class_name, _ in objects:
                vector[class_names.index(class_name)] = 1.0
            cls_labels[name] = vector
            _count_context(context_counts, split, vector, class_names, context)
            done += 1
            if progress is not None:
                progress(done, total)
    lists = {"train": splits["train"], "train_aug": splits["train"], "val": splits["val"]}
    for split, names in lists.items():
        with open(os.path.join(out, "ImageSets", "Segmentation", f"{split}.txt"), "w", encoding="utf-8") as handle:
            handle.write("\n".join(names) + "\n")
    np.save(os.path.join(out, "cls_labels.npy"), cls_labels)
    if present is not None:  # contexts of classes that never occur say nothing
        context_counts = {key: value for key, value in context_counts.items() if key.rsplit("_", 1)[1] in present}
    info = {
        "generator": "wsss_keras.data.synthetic",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "size": _size_info(sizes),
        "classes": list(all_names),
        "splits": {name: len(ids) for name, ids in lists.items()},
        "traps": {name: kind for name, kind in STYLE_TRAPS[style].items() if name in drawn},
        "context_rates": {"with_class": CONTEXT_WITH_CLASS, "without_class": CONTEXT_WITHOUT_CLASS, "distractor": DISTRACTOR_RATE},
        "context_counts": context_counts,
        "note": "train_aug lists the same images as train: the synthetic data has no separate augmented set.",
    }
    # Only other styles and subsets add keys: the default's synthetic.json stays as it was.
    if style != "flat":
        info["style"] = style
    if present is not None:
        info["present_classes"] = list(present)
    with open(os.path.join(out, "synthetic.json"), "w", encoding="utf-8") as handle:
        json.dump(info, handle, indent=2)
    return info


def _size_info(sizes):
    """`sizes` for synthetic.json: the int side of square images, else ["WxH", ...]."""
    return sizes if isinstance(sizes, int) else [f"{w}x{h}" for w, h in sizes]


# Objects per COCO image: COCO images hold about 2.9 categories on average, VOC's about 1.5.
COCO_OBJECT_COUNTS = ([1, 2, 3, 4, 5], [0.15, 0.3, 0.25, 0.18, 0.12])
COCO_SPLITS = ("train2014", "val2014")


def _generate_coco(out, class_names, sizes, n_train, n_val, seed, progress, style="flat"):
    """The COCO 2014 layout of `wsss_keras.data.coco`: JPEGImages/<split>/COCO_<split>_<id>.jpg,
    SegmentationClass/<split>/<stem>.png (0 background, 1..80, no ignore band, as
    `instances_to_label_maps` writes them), annotations/instances_<split>.json (one RLE
    annotation per class present, exactly its region of the label map) and cls_labels.npy."""
    from pycocotools import mask as mask_utils

    for split in COCO_SPLITS:
        for folder in ("JPEGImages", "SegmentationClass"):
            os.makedirs(os.path.join(out, folder, split), exist_ok=True)
    os.makedirs(os.path.join(out, "annotations"), exist_ok=True)
    categories = [
        {"id": int(category), "name": name, "supercategory": "synthetic"} for category, name in zip(COCO_CATEGORY_IDS, class_names)
    ]
    cls_labels, context_counts, total, done = {}, {}, n_train + n_val, 0
    image_id, annotation_id = 0, 0
    for split_id, (split, count) in enumerate(zip(COCO_SPLITS, (n_train, n_val))):
        images, annotations = [], []
        for index in range(count):
            rng = np.random.default_rng([seed, split_id, index])
            width, height = _size_of(sizes, index)
            image, label_map, _, context = RENDERERS[style](
                rng, (width, height), class_names, void_border=0, counts=COCO_OBJECT_COUNTS, kinds=COCO_KINDS
            )
            image_id += 1
            stem = f"COCO_{split}_{image_id:012d}"
            write_image(os.path.join(out, "JPEGImages", split, f"{stem}.jpg"), image, quality=92)
            write_label_map(os.path.join(out, "SegmentationClass", split, f"{stem}.png"), label_map)
            images.append({"id": image_id, "file_name": f"{stem}.jpg", "width": width, "height": height})
            vector = np.zeros(len(class_names), np.float32)
            for value in np.unique(label_map):
                if value == 0:
                    continue
                rle = mask_utils.encode(np.asfortranarray(label_map == value, dtype=np.uint8))
                annotation_id += 1
                annotations.append({
                    "id": annotation_id, "image_id": image_id, "category_id": int(COCO_CATEGORY_IDS[value - 1]),
                    "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
                    "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0,
                })  # fmt: skip
                vector[value - 1] = 1.0
            cls_labels[stem] = vector
            _count_context(context_counts, split, vector, class_names, context)
            done += 1
            if progress is not None:
                progress(done, total)
        instances = {
            "info": {"description": f"wsss_keras synthetic COCO-layout data, seed {seed}", "version": str(GENERATOR_VERSION)},
            "licenses": [], "images": images, "annotations": annotations, "categories": categories,
        }  # fmt: skip
        with open(os.path.join(out, "annotations", f"instances_{split}.json"), "w", encoding="utf-8") as handle:
            json.dump(instances, handle)
    np.save(os.path.join(out, "cls_labels.npy"), cls_labels)
    info = {
        "generator": "wsss_keras.data.synthetic",
        "version": GENERATOR_VERSION,
        "layout": "coco",
        "seed": seed,
        "size": _size_info(sizes),
        "classes": list(COCO_CLASSES),
        "splits": {"train2014": n_train, "val2014": n_val},
        "traps": {name: traps[COCO_KINDS.get(name, name)] for name in class_names if COCO_KINDS.get(name, name) in (traps := STYLE_TRAPS[style])},
        "context_counts": context_counts,
        "note": "COCO 2014 layout: JPEGImages/<split>/, SegmentationClass/<split>/, annotations/instances_<split>.json.",
    }
    if style != "flat":
        info["style"] = style
    with open(os.path.join(out, "synthetic.json"), "w", encoding="utf-8") as handle:
        json.dump(info, handle, indent=2)
    return info


def _choose_objects(rng, class_names, kinds, counts):
    """The image's objects: a count drawn from `counts` ((choices, probabilities)), then that
    many class names (with repeats only when there are fewer classes). Returns the kind of every
    class (`kinds` maps a class to the look it borrows; itself by default), the kinds present in
    the dataset, the chosen names and their kinds."""
    kinds = kinds or {}
    kind_of = {name: kinds.get(name, name) for name in class_names}
    choices, probabilities = counts
    count = int(rng.choice(choices, p=probabilities))
    chosen = [str(name) for name in rng.choice(class_names, size=count, replace=count > len(class_names))]
    return kind_of, set(kind_of.values()), chosen, {kind_of[name] for name in chosen}


def _paint_contexts(rng, canvas, ground, present_kinds, chosen_kinds, context, paint_water=None):
    """Paint the co-occurrence traps' contexts (water under `ground` for boats, rails for trains):
    each with CONTEXT_WITH_CLASS's probability when its class is in the image, else
    CONTEXT_WITHOUT_CLASS's; marks what was painted in `context`."""
    for context_kind, owner in CONTEXTS:
        if owner not in present_kinds:
            continue
        rate = CONTEXT_WITH_CLASS if owner in chosen_kinds else CONTEXT_WITHOUT_CLASS
        if rng.random() < rate:
            painter = (paint_water or _paint_water) if context_kind == "water" else _paint_rails
            painter(rng, canvas, ground)
            context[context_kind] = True


def _count_context(counts, split, vector, class_names, context):
    """Tally how often each context appears with and without its class (the trap's strength)."""
    for context_kind, owner in CONTEXTS:
        if owner not in class_names:
            continue
        with_class = bool(vector[class_names.index(owner)])
        key = f"{split}/{context_kind}|{'with' if with_class else 'without'}_{owner}"
        entry = counts.setdefault(key, [0, 0])
        entry[0] += int(bool(context.get(context_kind)))
        entry[1] += 1


# --------------------------------------------------------------------------------------
# Styles beyond `flat` (the drawings above). Each style fails WSSS differently:
#
# * photo: small objects (0.5-2 % of the image each) cut out of photographs and pasted on
#   photographs. Texture, not colour, tells the classes apart, and the backgrounds are crops of
#   the same photographs, so CAMs must find a few pixels in a busy scene. The traps stay:
#   water under boats and rails under trains, and plain bodies of the aeroplane's and the bus's
#   texture as background beside objects whose distinctive part is small.
# * clutter: thin, articulated stick shapes (chains of limbs bent at random joints) at scales
#   from tiny to half the image, several per image and overlapping, among many thin
#   distractor strokes, some in the classes' own colours. Thin parts are what CAMs blur away.

STYLES = ("flat", "photo", "clutter")
DEFAULT_STYLE = "flat"
# The traps each style keeps, by catalog kind (clutter has no small distinctive parts).
STYLE_TRAPS = {
    "flat": TRAP_CLASSES,
    "photo": TRAP_CLASSES,
    "clutter": {name: kind for name, kind in TRAP_CLASSES.items() if kind == "co-occurrence"},
}

# The photographs that ship inside scikit-image's wheel (no download): `skimage.data` fetches
# others through pooch, which would need the network.
PHOTO_BACKGROUNDS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "grass", "gravel", "brick", "moon", "immunohistochemistry")
# Each catalog kind's texture: a photograph, the region of it (top, left, bottom, right as
# fractions) and a tint for grey photographs (None: the photograph's own colours).
PHOTO_TEXTURES = {
    "aeroplane": ("moon", (0.0, 0.0, 1.0, 1.0), (215, 215, 225)),
    "boat": ("coffee", (0.55, 0.75, 1.0, 1.0), None),
    "car": ("coffee", (0.55, 0.15, 0.85, 0.45), None),
    "person": ("astronaut", (0.55, 0.05, 1.0, 0.5), None),
    "train": ("rocket", (0.05, 0.0, 0.9, 0.2), None),
    "bus": ("brick", (0.0, 0.0, 1.0, 1.0), (240, 190, 40)),  # rows of panes; the dotted board is the part
    "dog": ("chelsea", (0.0, 0.0, 0.45, 0.35), None),
    "bird": ("immunohistochemistry", (0.0, 0.0, 1.0, 1.0), None),
    "bottle": ("grass", (0.0, 0.0, 1.0, 1.0), (60, 170, 80)),
    "sheep": ("gravel", (0.0, 0.0, 1.0, 1.0), (245, 240, 225)),
    "cat": ("chelsea", (0.55, 0.6, 1.0, 1.0), None),
    "tvmonitor": ("hubble_deep_field", (0.0, 0.0, 1.0, 1.0), None),
}
# The small distinctive part of the under-activation kinds: its texture, and where it sits in
# the object's box (top, left, bottom, right as fractions, for an object facing right).
PHOTO_PARTS = {
    "aeroplane": (("astronaut", (0.0, 0.0, 0.45, 0.12), None), (0.0, 0.0, 0.55, 0.28)),
    "bus": (("hubble_deep_field", (0.0, 0.0, 1.0, 1.0), None), (0.0, 0.72, 0.45, 1.0)),
}
PHOTO_AREA = (0.005, 0.02)  # each object's share of the image: VOC's and COCO's small objects
PHOTO_COUNTS = ([1, 2, 3, 4], [0.3, 0.3, 0.25, 0.15])
CLUTTER_COUNTS = ([3, 4, 5, 6, 7, 8], [0.2, 0.2, 0.2, 0.15, 0.15, 0.1])
CLUTTER_SCALE = (0.12, 0.6)  # an object's length as a fraction of the image side, log-uniform


def _name_code(name):
    """A number fixed by the class name, so a class looks the same in every subset and layout."""
    return zlib.crc32(str(name).encode("utf-8"))


@functools.cache
def _photo(name):
    """A photograph of scikit-image's wheel as float32 RGB (grey ones as three equal channels)."""
    import skimage.data

    array = np.asarray(getattr(skimage.data, name)(), dtype=np.float32)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    array = array[..., :3]
    array.setflags(write=False)
    return array


def _photo_crop(rng, source, width, height):
    """A random crop of `source` (photograph, region, tint) resized to width x height, flipped at
    random and with its brightness jittered; grey photographs take the tint's colour."""
    name, (top, left, bottom, right), tint = source
    photo = _photo(name)
    ph, pw = photo.shape[:2]
    y0, x0, y1, x1 = int(top * ph), int(left * pw), max(int(bottom * ph), int(top * ph) + 2), max(int(right * pw), int(left * pw) + 2)
    region_h, region_w = y1 - y0, x1 - x0
    # Keep the crop's aspect close to the target's, at 35-100 % of the region's size.
    fraction = rng.uniform(0.35, 1.0)
    aspect = width / max(height, 1)
    crop_h = max(2, int(min(region_h, region_w / aspect) * fraction))
    crop_w = max(2, min(region_w, int(crop_h * aspect)))
    cy = y0 + int(rng.integers(0, max(1, region_h - crop_h + 1)))
    cx = x0 + int(rng.integers(0, max(1, region_w - crop_w + 1)))
    crop = photo[cy : cy + crop_h, cx : cx + crop_w]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    out = cv2.resize(np.ascontiguousarray(crop), (int(width), int(height)), interpolation=cv2.INTER_AREA if crop_w > width else cv2.INTER_LINEAR)
    if tint is not None:
        grey = out.mean(axis=2, keepdims=True)
        out = grey / max(float(grey.mean()), 1.0) * np.asarray(tint, np.float32)
    out = out * rng.uniform(0.85, 1.15)
    return np.clip(out, 0, 255).astype(np.float32)


def _photo_texture_of(name, kind):
    if kind in PHOTO_TEXTURES:
        return PHOTO_TEXTURES[kind]
    # Classes without a texture of their own (COCO's, VOC's without a drawer): a region and a
    # tint fixed by the name, from the grey photographs, so the tint sets them apart.
    code = _name_code(name)
    grey = ("grass", "gravel", "brick", "moon", "coins", "camera")
    row, column = (code >> 8) % 2, (code >> 12) % 2
    hue = (code % 997) / 997.0
    tint = tuple(255 * c for c in colorsys.hsv_to_rgb(hue, 0.6, 0.9))
    return grey[code % len(grey)], (0.5 * row, 0.5 * column, 0.5 * row + 0.5, 0.5 * column + 0.5), tint


def _largest_component(mask):
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return mask
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def _silhouette(rng, name, kind, class_index):
    """The outline of one object of the class, cropped to its box: the flat style's drawing of
    the class (or the generic shape) on a scratch canvas, so shapes stay those of the class."""
    side = 128
    scratch = _Canvas(np.zeros((side, side, 3), np.float32), np.zeros((side, side), np.uint8))
    drawer = DRAWERS.get(kind) or _generic_drawer(class_index)
    flip = bool(rng.random() < 0.5)
    if kind in GROUNDED:
        mask = drawer(rng, scratch, 1, side * 0.1, side * 0.2, side * 0.6, flip, ground=None)
    else:
        mask = drawer(rng, scratch, 1, side * 0.1, side * 0.2, side * 0.6, flip)
    mask = _largest_component(mask)
    ys, xs = np.nonzero(mask)
    return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1], flip


def _scaled_mask(template, area, low, high):
    """`template` resized so that its largest connected piece covers about `area` pixels, and
    within [low, high] where the image allows it."""
    scale = np.sqrt(area / float(template.sum()))
    best, best_error = None, np.inf
    for _ in range(8):  # resizing rounds the area; correct the scale until it lands in range
        h = max(1, round(template.shape[0] * scale))
        w = max(1, round(template.shape[1] * scale))
        mask = _largest_component(cv2.resize(template.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) > 0.5)
        got = float(mask.sum())
        error = 0.0 if low <= got <= high else min(abs(got - low), abs(got - high))
        if got > 0 and error < best_error:
            best, best_error = mask, error
        if got > 0 and error == 0.0 and abs(got - area) <= 0.1 * area:
            break
        scale *= np.sqrt(area / max(got, 1.0)) * (1.0 + 0.03 * np.sign(area - got))
    if best is None:
        return np.ones((1, 1), bool)
    ys, xs = np.nonzero(best)
    return best[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def _place(rng, occupied, box_h, box_w, ground=None, tries=40):
    """Top-left corner of a box_h x box_w box inside the image that keeps three pixels away from
    `occupied`, or None (three pixels: the void bands of two neighbours stay apart). With `ground`,
    the box stands on that line (its bottom near it)."""
    height, width = occupied.shape
    if box_h > height - 2 or box_w > width - 2:
        return None
    for _ in range(tries):
        x = int(rng.integers(1, width - box_w))
        if ground is None:
            y = int(rng.integers(1, height - box_h))
        else:
            y = int(np.clip(ground - box_h * rng.uniform(0.75, 0.95), 1, height - box_h - 1))
        if not occupied[max(0, y - 3) : y + box_h + 3, max(0, x - 3) : x + box_w + 3].any():
            return y, x
    return None


def render_photo_sample(rng, size, class_names, void_border=1, counts=None, kinds=None):
    """One image of the `photo` style; arguments and result as `render_sample`. Objects do not
    touch one another, so each one is a connected piece of its class in the label map."""
    width, height = (size, size) if np.isscalar(size) else (int(size[0]), int(size[1]))
    kind_of, present_kinds, chosen, chosen_kinds = _choose_objects(rng, class_names, kinds, counts or PHOTO_COUNTS)
    background = PHOTO_BACKGROUNDS[int(rng.integers(len(PHOTO_BACKGROUNDS)))]
    image = _photo_crop(rng, (background, (0.0, 0.0, 1.0, 1.0), None), width, height)
    image += rng.normal(0, 4, image.shape).astype(np.float32)
    label_map = np.zeros((height, width), np.uint8)
    canvas = _Canvas(image, label_map)
    context = {}
    ground = height * rng.uniform(0.6, 0.78)

    def paint_photo_water(rng, canvas, ground):
        band = _rect(canvas.shape, 0, ground, width, height)
        water = _photo_crop(rng, ("gravel", (0.0, 0.0, 1.0, 1.0), (50, 110, 190)), width, height)
        canvas.paint(band, water, 0)

    _paint_contexts(rng, canvas, ground, present_kinds, chosen_kinds, context, paint_water=paint_photo_water)
    image_area = width * height
    index_of = {name: position + 1 for position, name in enumerate(class_names)}
    for kind in ("aeroplane", "bus"):
        # A plain body in the class's body texture, as background: only the small part is the class.
        if kind in present_kinds and rng.random() < DISTRACTOR_RATE:
            area = image_area * rng.uniform(*PHOTO_AREA)
            h = max(2, int(np.sqrt(area * (0.35 if kind == "aeroplane" else 0.42))))
            w = max(2, int(area / h))
            y, x = int(rng.integers(0, max(1, height - h))), int(rng.integers(0, max(1, width - w)))
            body = _ellipse(canvas.shape, (x + w / 2, y + h / 2), (w / 2, h / 2)) if kind == "aeroplane" else _rect(canvas.shape, x, y, x + w, y + h)
            canvas.paint(body, _paste(canvas.shape, _photo_crop(rng, PHOTO_TEXTURES[kind], w, h), y, x), 0)
            context[f"{kind}_distractor"] = True
    occupied = np.zeros((height, width), bool)
    objects = []
    for name in chosen:
        kind = kind_of[name]
        template, flip = _silhouette(rng, name, kind, index_of[name])
        low, high = PHOTO_AREA[0] * image_area, PHOTO_AREA[1] * image_area
        mask = _scaled_mask(template, image_area * rng.uniform(PHOTO_AREA[0] * 1.2, PHOTO_AREA[1] * 0.9), low, high)
        h, w = mask.shape
        grounded = (kind == "boat" and context.get("water")) or (kind == "train" and context.get("rails"))
        corner = _place(rng, occupied, h, w, ground=ground if grounded else None)
        if corner is None:
            continue
        y, x = corner
        texture = _photo_crop(rng, _photo_texture_of(name, kind), w, h)
        if kind in PHOTO_PARTS:
            source, (top, left, bottom, right) = PHOTO_PARTS[kind]
            if flip:
                left, right = 1.0 - right, 1.0 - left
            part = np.zeros_like(mask)
            part[int(top * h) : max(int(bottom * h), int(top * h) + 1), int(left * w) : max(int(right * w), int(left * w) + 1)] = True
            texture = np.where(part[..., None], _photo_crop(rng, source, w, h), texture)
        full = np.zeros((height, width), bool)
        full[y : y + h, x : x + w] = mask
        canvas.paint(full, _paste(canvas.shape, texture, y, x), index_of[name])
        occupied |= full
        objects.append((name, (x + 1, y + 1, x + w, y + h)))
    if not objects:  # every placement failed (a tiny image): fall back to the flat drawing
        return render_sample(rng, size, class_names, void_border, counts, kinds)
    # A faint shadow of the photographs' blur, so pasted edges are not a give-away.
    canvas.image[:] = cv2.GaussianBlur(canvas.image, (3, 3), 0.6)
    if void_border > 0:
        label_map = _add_void_border(label_map, void_border)
    return np.clip(canvas.image, 0, 255).astype(np.uint8), label_map, objects, context


def _paste(shape, patch, y, x):
    """`patch` placed at (y, x) on an image-sized texture (zeros elsewhere)."""
    out = np.zeros(shape + (3,), np.float32)
    h, w = patch.shape[:2]
    out[y : y + h, x : x + w] = patch[: shape[0] - y, : shape[1] - x]
    return out


def _stick_look(name, kind):
    """A class's fixed look in the clutter style: limbs, their thickness and bend, a side branch,
    an end mark and a colour, all fixed by the name (by the catalog position for catalog kinds)."""
    code = CATALOG.index(kind) * 7919 + 11 if kind in CATALOG else _name_code(name)
    hue = ((code % 1009) / 1009.0 * 0.618034 + (code % 13) / 13.0) % 1.0
    return {
        "limbs": 2 + code % 4,
        "thickness": (0.025, 0.045, 0.07)[(code // 4) % 3],
        "bend": np.deg2rad(((code // 12) % 7) * 20 - 60),
        "branch": bool((code // 84) % 2),
        "end": (code // 168) % 4,  # 0 none, 1 disc, 2 fork, 3 bar
        "colour": tuple(255 * c for c in colorsys.hsv_to_rgb(hue, 0.75, 0.9)),
        "second": tuple(255 * c for c in colorsys.hsv_to_rgb((hue + 0.45) % 1.0, 0.6, 0.45)),
    }


def _draw_stick(rng, canvas, label, look, cx, cy, length):
    """One articulated object: a chain of limbs from (cx, cy), each bent by the class's angle
    plus a random joint angle, with its branch and end mark; returns its mask."""
    shape = canvas.shape
    mask = np.zeros(shape, np.uint8)
    # Three pixels at least, so that a line keeps a core of its class inside the void band.
    thick = max(3, round(length * look["thickness"]))
    limb = length / look["limbs"]
    angle = rng.uniform(0, 2 * np.pi)
    points = [(cx, cy)]
    for _ in range(look["limbs"]):
        angle += look["bend"] + rng.uniform(-0.45, 0.45)
        points.append((points[-1][0] + limb * np.cos(angle), points[-1][1] + limb * np.sin(angle)))
    pts = np.round(np.asarray(points)).astype(np.int32)
    cv2.polylines(mask, [pts], False, 1, thick)
    if look["branch"]:
        mid = pts[len(pts) // 2]
        side = angle + np.pi / 2 + rng.uniform(-0.4, 0.4)
        cv2.line(mask, tuple(int(v) for v in mid), (int(mid[0] + 0.7 * limb * np.cos(side)), int(mid[1] + 0.7 * limb * np.sin(side))), 1, thick)
    end = pts[-1]
    mark = max(2, round(limb * 0.3))
    if look["end"] == 1:
        cv2.circle(mask, tuple(int(v) for v in end), mark, 1, -1)
    elif look["end"] == 2:
        for turn in (-0.6, 0.6):
            cv2.line(mask, tuple(int(v) for v in end), (int(end[0] + mark * 1.5 * np.cos(angle + turn)), int(end[1] + mark * 1.5 * np.sin(angle + turn))), 1, max(1, thick // 2))
    elif look["end"] == 3:
        across = angle + np.pi / 2
        a = (int(end[0] - mark * np.cos(across)), int(end[1] - mark * np.sin(across)))
        b = (int(end[0] + mark * np.cos(across)), int(end[1] + mark * np.sin(across)))
        cv2.line(mask, a, b, 1, thick + 1)
    mask = mask.astype(bool)
    texture = _stripes(shape, _jitter_colour(rng, look["colour"], 14), look["second"], max(2.0, thick * 1.5), angle)
    canvas.paint(mask, texture, label)
    return mask


def render_clutter_sample(rng, size, class_names, void_border=1, counts=None, kinds=None):
    """One image of the `clutter` style; arguments and result as `render_sample`."""
    width, height = (size, size) if np.isscalar(size) else (int(size[0]), int(size[1]))
    side = min(width, height)
    kind_of, present_kinds, chosen, chosen_kinds = _choose_objects(rng, class_names, kinds, counts or CLUTTER_COUNTS)
    label_map = np.zeros((height, width), np.uint8)
    canvas = _Canvas(_background(rng, width, height), label_map)
    context = {}
    ground = height * rng.uniform(0.55, 0.75)
    _paint_contexts(rng, canvas, ground, present_kinds, chosen_kinds, context)
    looks = {name: _stick_look(name, kind_of[name]) for name in class_names}
    # Distractor strokes: straight, unbranched, in muted colours or a present class's colour, so
    # neither colour nor thinness alone tells a class.
    strokes = int(rng.integers(8, 20))
    for _ in range(strokes):
        if rng.random() < 0.35:
            colour = looks[str(rng.choice(class_names))]["colour"]
            context["class_coloured_strokes"] = context.get("class_coloured_strokes", 0) + 1
        else:
            colour = tuple(float(c) for c in rng.uniform(60, 190, 3))
        a = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        length, angle = side * rng.uniform(0.1, 0.5), rng.uniform(0, 2 * np.pi)
        b = (int(a[0] + length * np.cos(angle)), int(a[1] + length * np.sin(angle)))
        cv2.line(canvas.image, a, b, tuple(float(c) for c in _jitter_colour(rng, colour, 14)), max(1, int(side * rng.uniform(0.01, 0.05))))
    objects = []
    index_of = {name: position + 1 for position, name in enumerate(class_names)}
    for name in chosen:
        length = side * float(np.exp(rng.uniform(np.log(CLUTTER_SCALE[0]), np.log(CLUTTER_SCALE[1]))))
        cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
        if kind_of[name] in ("boat", "train") and context.get("water" if kind_of[name] == "boat" else "rails"):
            cy = ground - length * 0.15
        mask = _draw_stick(rng, canvas, index_of[name], looks[name], cx, cy, length)
        visible = mask & (label_map == index_of[name])
        if visible.any():
            ys, xs = np.nonzero(visible)
            objects.append((name, (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1)))
    if void_border > 0:
        label_map = _add_void_border(label_map, void_border)
    # Crossings and the void band may leave a class no pixel of its own; the labels follow the map.
    present = {class_names[v - 1] for v in np.unique(label_map) if 0 < v < IGNORE_INDEX}
    objects = [obj for obj in objects if obj[0] in present]
    if not objects:  # every stick left the image or vanished: fall back to the flat drawing
        return render_sample(rng, size, class_names, void_border, counts, kinds)
    return np.clip(canvas.image, 0, 255).astype(np.uint8), label_map, objects, context


RENDERERS = {"flat": render_sample, "photo": render_photo_sample, "clutter": render_clutter_sample}
