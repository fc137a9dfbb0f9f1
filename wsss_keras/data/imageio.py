"""Reading and writing images and label maps, with errors that name the file.

Images are read with OpenCV and returned as RGB uint8. Label maps are PNGs holding class
indices: palette ("P") PNGs as in VOC's SegmentationClass, or single-channel PNGs as in
SBD's SegmentationClassAug. Pillow reads both as indices (OpenCV would expand a palette PNG
to colours), and writes palette PNGs.
"""

import os

import cv2
import numpy as np
from PIL import Image
from wsss_deploy.label_maps import label_png

from wsss_keras.errors import DataError

IGNORE_INDEX = 255


def voc_palette(num_entries=256):
    """The PASCAL VOC colour map: `num_entries` x 3 uint8, index 255 is (224, 224, 192)."""
    palette = np.zeros((num_entries, 3), dtype=np.uint8)
    for index in range(num_entries):
        value, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[index] = (r, g, b)
    return palette


def read_image(path):
    """Read an image file as an RGB uint8 array of shape (H, W, 3).

    JPEG and PNG files cut short are refused: OpenCV decodes them anyway, with a grey or
    black remainder and only a libjpeg warning on stderr, which would train on a broken image.
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: image file not found; check the dataset root and the split file.")
    # One read for both the completeness check and the decode.
    with open(path, "rb") as handle:
        data = handle.read()
    missing_end = _missing_end_marker(data)
    if missing_end:
        raise DataError(
            f"{path}: cannot decode this image: the file is truncated ({missing_end}); "
            "copy or download it again, or remove its name from the split file."
        )
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None or image.size == 0:
        raise DataError(
            f"{path}: cannot decode this image (corrupt or not a JPEG/PNG); "
            "re-export it or remove its name from the split file."
        )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and its fixed CRC
# JPEG markers that stand alone, without a length field: TEM, RST0..7, SOI, EOI.
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xDA)}


def _missing_end_marker(data):
    """Why a JPEG or PNG file is incomplete ("" when it is complete or another format).

    A JPEG must hold its end-of-image marker (FF D9) after the first start-of-scan; the header
    segments before it are skipped by their lengths, so an EXIF thumbnail's own FF D9 does not
    count. Bytes after the marker (padding, appended data) are allowed. A PNG must hold its
    IEND chunk.
    """
    if data.startswith(b"\xff\xd8"):
        position = 2
        while True:
            if position >= len(data) or data[position] != 0xFF:
                # Not at a marker: malformed rather than cut short; the decoder reports it.
                return "" if position < len(data) else "JPEG header ends before the image data"
            while position < len(data) and data[position] == 0xFF:  # fill bytes before a marker
                position += 1
            if position >= len(data):
                return "JPEG header ends before the image data"
            marker = data[position]
            if marker == 0xD9:
                return ""
            if marker in _JPEG_STANDALONE:
                position += 1
                continue
            segment_end = position + 1 + int.from_bytes(data[position + 1 : position + 3], "big")
            if segment_end > len(data):
                return "JPEG header ends before the image data"
            if marker == 0xDA:  # start of scan: entropy-coded data follows, never holding FF D9
                return "" if data.find(b"\xff\xd9", segment_end) >= 0 else "no JPEG end-of-image marker"
            position = segment_end
    if data.startswith(_PNG_SIGNATURE):
        return "" if data.rfind(_PNG_END) >= 0 else "no PNG IEND chunk"
    return ""


def read_label_map(path, num_classes=None):
    """Read a label PNG (palette or single-channel) as a uint8 array of class indices.

    Args:
        path: the PNG file.
        num_classes: when given, every value must be a class index below it or 255 (ignore).
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: label map not found; check the dataset root and the split file.")
    try:
        with Image.open(path) as png:
            png.load()
            if png.mode not in ("P", "L", "I;16", "I"):
                raise DataError(
                    f"{path}: label map has mode {png.mode!r}; expected a palette or single-channel "
                    "PNG of class indices (colour-coded RGB masks must be converted to indices)."
                )
            labels = np.asarray(png)
    except DataError:
        raise
    except Exception as error:  # Pillow raises several types for truncated or foreign files.
        raise DataError(
            f"{path}: cannot decode this label map ({error}); re-export it as a PNG of class indices."
        ) from None
    if labels.max(initial=0) > 255:
        raise DataError(f"{path}: label value {int(labels.max())} does not fit in 0..255.")
    labels = labels.astype(np.uint8)
    if num_classes is not None:
        check_label_values(labels, num_classes, path)
    return labels


def check_label_values(labels, num_classes, source):
    """Raise if `labels` holds a value that is neither a class index nor the ignore index."""
    values = np.unique(labels)
    bad = values[(values >= num_classes) & (values != IGNORE_INDEX)]
    if bad.size:
        raise DataError(
            f"{source}: label value(s) {', '.join(str(int(v)) for v in bad[:5])} are not classes "
            f"(0..{num_classes - 1}) nor {IGNORE_INDEX} (ignore); fix the mask or the class-names file."
        )


def write_label_map(path, labels, palette=None):
    """Write class indices as a palette PNG (the VOC palette unless another is given)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"label map for {path} must be 2-D, got shape {labels.shape}")
    png = label_png(labels.astype(np.uint8), voc_palette() if palette is None else palette)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(png)


def write_image(path, image, quality=95):
    """Write an RGB uint8 image; JPEG for .jpg/.jpeg, otherwise by extension."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.lower().endswith((".jpg", ".jpeg")) else []
    if not cv2.imwrite(path, cv2.cvtColor(np.asarray(image, dtype=np.uint8), cv2.COLOR_RGB2BGR), params):
        raise DataError(f"{path}: could not write the image; check the folder exists and is writable.")
