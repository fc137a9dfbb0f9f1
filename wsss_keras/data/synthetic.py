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
"""

import json
import os
import shutil
import xml.etree.ElementTree as ElementTree

import cv2
import numpy as np

from wsss_keras.data.classes import CLASS_NAMES_FILE, write_class_names
from wsss_keras.data.imageio import IGNORE_INDEX, write_image, write_label_map
from wsss_keras.errors import DataError

GENERATOR_VERSION = 1

# How often the context region appears with and without its class: P(context | class) and
# P(context | no class). The gap is what makes the context a shortcut for the classifier.
CONTEXT_WITH_CLASS = 0.95
CONTEXT_WITHOUT_CLASS = 0.06
# How often a plain body of an under-activation class's colour appears as background clutter.
DISTRACTOR_RATE = 0.45

TRAP_CLASSES = {"boat": "co-occurrence", "train": "co-occurrence", "aeroplane": "under-activation", "bus": "under-activation"}
CATALOG = ("aeroplane", "boat", "car", "person", "train", "bus", "dog", "bird", "bottle", "sheep", "cat", "tvmonitor")
DEFAULT_CLASSES = 6


def resolve_classes(classes):
    """Class names (without background) from a count or a comma-separated list of catalog names."""
    if isinstance(classes, int) or (isinstance(classes, str) and classes.strip().isdigit()):
        count = int(classes)
        if not 1 <= count <= len(CATALOG):
            raise DataError(f"--classes {count}: choose 1..{len(CATALOG)} classes, or a comma-separated list of {', '.join(CATALOG)}.")
        return CATALOG[:count]
    names = tuple(name.strip() for name in str(classes).split(",") if name.strip())
    unknown = [name for name in names if name not in CATALOG]
    if unknown or not names or len(set(names)) != len(names):
        raise DataError(
            f"--classes {classes!r}: give a count or distinct names from: {', '.join(CATALOG)}"
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
    centre = (int(round(centre[0])), int(round(centre[1])))
    axes = (max(1, int(round(axes[0]))), max(1, int(round(axes[1]))))
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


def _background(rng, size):
    top, bottom = rng.uniform(60, 200, 3), rng.uniform(60, 200, 3)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    image = top * (1 - ramp) + bottom * ramp
    image = np.broadcast_to(image, (size, size, 3)).copy()
    image += rng.normal(0, 6, (size, size, 3)).astype(np.float32)
    for _ in range(int(rng.integers(2, 6))):  # muted clutter that belongs to no class
        colour = tuple(float(c) for c in rng.uniform(70, 170, 3))
        centre = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        if rng.random() < 0.5:
            cv2.circle(image, centre, int(rng.integers(size // 24 + 1, size // 8 + 2)), colour, -1)
        else:
            half = int(rng.integers(size // 24 + 1, size // 8 + 2))
            cv2.rectangle(image, (centre[0] - half, centre[1] - half // 2), (centre[0] + half, centre[1] + half // 2), colour, -1)
    return image


def _paint_water(rng, canvas, line):
    size = canvas.shape[0]
    band = _rect(canvas.shape, 0, line, size, size)
    waves = _stripes(canvas.shape, _jitter_colour(rng, (40, 100, 190), 10), (90, 150, 220), max(2.0, size / 28), np.pi / 2 + 0.15, rng.uniform(0, 10))
    canvas.paint(band, waves, 0)


def _paint_rails(rng, canvas, line):
    size = canvas.shape[0]
    bed = _rect(canvas.shape, 0, line - size * 0.02, size, line + size * 0.09)
    sleepers = _stripes(canvas.shape, (110, 80, 50), (150, 140, 125), max(2.0, size / 20), 0.0)
    canvas.paint(bed, sleepers, 0)
    for offset in (0.0, 0.06):
        canvas.paint(_rect(canvas.shape, 0, line + size * offset, size, line + size * offset + max(1, size * 0.012)), _flat(canvas.shape, (60, 60, 66)), 0)


def _paint_distractor(rng, canvas, kind):
    """A plain body of an under-activation class's colour, as background."""
    size = canvas.shape[0]
    s = size * rng.uniform(0.25, 0.5)
    x, y = rng.uniform(-0.1, 0.9) * size, rng.uniform(0.0, 0.8) * size
    if kind == "aeroplane":
        mask = _ellipse(canvas.shape, (x, y), (s * 0.5, s * rng.uniform(0.09, 0.3)), rng.uniform(-20, 20))
        colour = (196, 198, 204)
    else:
        mask = _rect(canvas.shape, x, y, x + s, y + s * 0.42)
        colour = (228, 186, 40)
    canvas.paint(mask, _flat(canvas.shape, _jitter_colour(rng, colour, 8)), 0)


def render_sample(rng, size, class_names, void_border=1):
    """Draw one image.

    Returns:
        (image uint8 HxWx3, label map uint8 HxW, objects [(name, (xmin, ymin, xmax, ymax))], context dict).
    """
    count = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2]))
    chosen = [str(name) for name in rng.choice(class_names, size=count, replace=count > len(class_names))]
    label_map = np.zeros((size, size), np.uint8)
    canvas = _Canvas(_background(rng, size), label_map)
    context = {}
    for kind in ("aeroplane", "bus"):
        if kind in class_names and rng.random() < DISTRACTOR_RATE:
            _paint_distractor(rng, canvas, kind)
            context[f"{kind}_distractor"] = True
    ground = size * rng.uniform(0.55, 0.75)
    for context_kind, owner in (("water", "boat"), ("rails", "train")):
        if owner not in class_names:
            continue
        rate = CONTEXT_WITH_CLASS if owner in chosen else CONTEXT_WITHOUT_CLASS
        if rng.random() < rate:
            (_paint_water if context_kind == "water" else _paint_rails)(rng, canvas, ground)
            context[context_kind] = True
    objects = []
    index_of = {name: position + 1 for position, name in enumerate(class_names)}
    for name in chosen:
        low, high = SIZE_RANGE.get(name, DEFAULT_SIZE_RANGE)
        width = size * rng.uniform(low, high)
        x = rng.uniform(-0.1 * width, size - 0.9 * width)
        y = rng.uniform(0.02 * size, max(0.03 * size, size * 0.85 - width * 0.5))
        flip = bool(rng.random() < 0.5)
        drawer = DRAWERS[name]
        grounded = name in GROUNDED and (context.get("water") if name == "boat" else context.get("rails") if name == "train" else True)
        if name in GROUNDED:
            mask = drawer(rng, canvas, index_of[name], x, y, width, flip, ground=ground if grounded else None)
        else:
            mask = drawer(rng, canvas, index_of[name], x, y, width, flip)
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


def _annotation_xml(name, size, objects):
    root = ElementTree.Element("annotation")
    ElementTree.SubElement(root, "folder").text = "SYNTH"
    ElementTree.SubElement(root, "filename").text = f"{name}.jpg"
    size_node = ElementTree.SubElement(root, "size")
    for tag, value in (("width", size), ("height", size), ("depth", 3)):
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


def generate(out, classes=DEFAULT_CLASSES, size=128, n_train=600, n_val=150, seed=0, overwrite=False, progress=None):
    """Write a synthetic dataset in the VOC layout under `out`.

    Args:
        out: folder to create (it must be empty or absent, unless `overwrite`).
        classes: a class count (the first N of the catalog; the default 6 include all four
            trap classes) or a comma-separated list of catalog names.
        size: image side in pixels (square images).
        n_train, n_val: number of training and validation images.
        seed: the seed; the same arguments always give the same files.
        overwrite: replace an existing non-empty folder.
        progress: optional callable(done, total).

    Returns:
        a dict of what was written (also saved as `synthetic.json`).

    Example:
    >>> from wsss_keras.data.synthetic import generate
    >>> info = generate("/tmp/synth", n_train=8, n_val=4, overwrite=True)
    >>> info["splits"]["train"]
    8
    """
    class_names = resolve_classes(classes)
    if size < 32:
        raise DataError(f"--size {size}: images must be at least 32 pixels wide.")
    if n_train < 1 or n_val < 1:
        raise DataError(f"--n-train {n_train} / --n-val {n_val}: each split needs at least one image.")
    if os.path.isdir(out) and os.listdir(out):
        if not overwrite:
            raise DataError(f"{out}: folder exists and is not empty; choose another folder or pass --overwrite.")
        shutil.rmtree(out)
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "Annotations", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(out, folder), exist_ok=True)
    all_names = ("background",) + tuple(class_names)
    write_class_names(os.path.join(out, CLASS_NAMES_FILE), all_names)

    splits = {"train": [f"train_{i:05d}" for i in range(n_train)], "val": [f"val_{i:05d}" for i in range(n_val)]}
    cls_labels, context_counts, total, done = {}, {}, n_train + n_val, 0
    for split_id, (split, names) in enumerate(splits.items()):
        for index, name in enumerate(names):
            rng = np.random.default_rng([seed, split_id, index])
            image, label_map, objects, context = render_sample(rng, size, class_names)
            write_image(os.path.join(out, "JPEGImages", f"{name}.jpg"), image, quality=92)
            for folder in ("SegmentationClass", "SegmentationClassAug"):
                write_label_map(os.path.join(out, folder, f"{name}.png"), label_map)
            with open(os.path.join(out, "Annotations", f"{name}.xml"), "w", encoding="utf-8") as handle:
                handle.write(_annotation_xml(name, size, objects))
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
    info = {
        "generator": "wsss_keras.data.synthetic",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "classes": list(all_names),
        "splits": {name: len(ids) for name, ids in lists.items()},
        "traps": {name: kind for name, kind in TRAP_CLASSES.items() if name in class_names},
        "context_rates": {"with_class": CONTEXT_WITH_CLASS, "without_class": CONTEXT_WITHOUT_CLASS, "distractor": DISTRACTOR_RATE},
        "context_counts": context_counts,
        "note": "train_aug lists the same images as train: the synthetic data has no separate augmented set.",
    }
    with open(os.path.join(out, "synthetic.json"), "w", encoding="utf-8") as handle:
        json.dump(info, handle, indent=2)
    return info


def _count_context(counts, split, vector, class_names, context):
    """Tally how often each context appears with and without its class (the trap's strength)."""
    for context_kind, owner in (("water", "boat"), ("rails", "train")):
        if owner not in class_names:
            continue
        with_class = bool(vector[class_names.index(owner)])
        key = f"{split}/{context_kind}|{'with' if with_class else 'without'}_{owner}"
        entry = counts.setdefault(key, [0, 0])
        entry[0] += int(bool(context.get(context_kind)))
        entry[1] += 1
