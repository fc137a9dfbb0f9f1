"""Label maps as palette PNGs: pixel value = class index, colours from the manifest's palette."""

import io

import numpy as np


def label_png(labels, palette, compress_level=6):
    """The (H, W) label map as 8-bit palette PNG bytes (`compress_level` as zlib's: 1 is fastest)."""
    from PIL import Image

    image = Image.fromarray(np.asarray(labels, np.uint8), mode="P")
    table = np.zeros((256, 3), np.uint8)
    table[: len(palette)] = np.asarray(palette, np.uint8)[:256]
    image.putpalette(table.reshape(-1).tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()
