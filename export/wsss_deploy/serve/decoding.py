"""Turning an uploaded body into the uint8 RGB array the exported graph takes, safely.

Every refusal is an `InputError` with the HTTP status, a short code and a message that says
what was wrong and what to send instead. The pixel limit is checked from the header, before any
pixel is decoded, so a small file that would expand to gigabytes (a decompression bomb) costs
nothing. EXIF orientation is applied, so the mask matches the image as viewers show it.
"""

import io
import warnings

import numpy as np

# Formats Pillow decodes that a camera or a web page produces; anything else is refused.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
ACCEPTED_CONTENT_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp", "image/tiff", "image/gif",
                          "application/octet-stream")
# Modes converted to RGB, and what the conversion did (reported in the X-Input-Conversion header).
_CONVERSIONS = {
    "RGB": None,
    "L": "grayscale -> RGB",
    "1": "1-bit -> RGB",
    "P": "palette -> RGB",
    "CMYK": "CMYK -> RGB",
    "YCbCr": "YCbCr -> RGB",
    "LAB": "Lab -> RGB",
    "HSV": "HSV -> RGB",
    "RGBA": "RGBA -> RGB (alpha ignored)",
    "RGBa": "RGBa -> RGB (alpha ignored)",
    "RGBX": "RGBX -> RGB",
    "LA": "grayscale+alpha -> RGB (alpha ignored)",
    "La": "grayscale+alpha -> RGB (alpha ignored)",
    "PA": "palette+alpha -> RGB (alpha ignored)",
}
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class InputError(Exception):
    """A request the server refuses: `status` (4xx), `code` (short, stable) and `message`."""

    def __init__(self, status, code, message, headers=None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def media_type(content_type):
    """'image/png; charset=x' -> 'image/png' (lower case; '' when absent)."""
    return (content_type or "").split(";")[0].strip().lower()


def check_content_type(content_type):
    kind = media_type(content_type)
    if kind not in ACCEPTED_CONTENT_TYPES:
        raise InputError(415, "unsupported_media_type",
                         f"Content-Type {kind or '(none)'!r} is not an image; send the image bytes with "
                         f"Content-Type image/jpeg or image/png (or {', '.join(ACCEPTED_CONTENT_TYPES[2:])}), "
                         "or as the 'image' field of a multipart/form-data upload.")


def decode_image(data, max_pixels):
    """(uint8 (H, W, 3) RGB array, [conversion notes]) for the bytes of an image file."""
    return decode_opened(open_image(data, max_pixels), max_pixels)


def open_image(data, max_pixels):
    """The Pillow image of `data`, its header read and checked but no pixel decoded yet (Pillow
    opens lazily), so `image.size` can be budgeted before `decode_opened` spends the memory."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InputError(400, "empty_body", "the request has no image bytes; send the image file as the body.")
    try:
        with warnings.catch_warnings():
            # Our own limit is checked below from the header; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InputError(415, "unreadable_image",
                         f"the body ({len(data)} bytes) is not an image format this server reads; "
                         f"send one of {', '.join(ACCEPTED_FORMATS)}.") from None
    except Image.DecompressionBombError as error:
        raise _too_many_pixels(str(error), max_pixels) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise InputError(400, "corrupt_image", f"the image header is corrupt or truncated ({error}); "
                         "send the complete file.") from None
    if image.format not in ACCEPTED_FORMATS:
        raise InputError(415, "unsupported_format",
                         f"{image.format} images are not accepted; send one of {', '.join(ACCEPTED_FORMATS)}.")
    width, height = image.size
    if width * height > max_pixels:
        raise _too_many_pixels(f"{width} x {height} = {width * height} pixels", max_pixels)
    if width < 1 or height < 1:
        raise InputError(400, "empty_image", f"the image is {width} x {height} pixels; send a non-empty image.")
    return image


def decode_opened(image, max_pixels):
    """(uint8 (H, W, 3) RGB array, [conversion notes]) of an `open_image` result, EXIF
    orientation applied."""
    from PIL import Image, ImageOps

    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as error:
        raise _too_many_pixels(str(error), max_pixels) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as error:
        raise InputError(400, "corrupt_image", f"the {image.format} data is corrupt or truncated ({error}); "
                         "send the complete file.") from None
    return _to_rgb(image)


def _too_many_pixels(what, max_pixels):
    return InputError(413, "too_many_pixels", f"the image has too many pixels ({what}); this server takes at most "
                      f"{max_pixels} pixels (--max-pixels). Downscale it before sending.")


def _to_rgb(image):
    notes = []
    mode = image.mode
    if mode in _SIXTEEN_BIT:
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise InputError(415, "unsupported_mode", f"32-bit integer images (values {values.min()}..{values.max()}) "
                             "are not accepted; send 8-bit or 16-bit images.")
        gray = np.round(values.astype(np.float64) / 257.0).astype(np.uint8)
        notes.append(f"16-bit grayscale ({mode}) -> 8-bit RGB (value / 257)")
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=-1)), notes
    if mode not in _CONVERSIONS:
        raise InputError(415, "unsupported_mode", f"images of Pillow mode {mode!r} (e.g. floating point) are not "
                         "accepted; send 8-bit RGB, grayscale or RGBA, or 16-bit grayscale.")
    if _CONVERSIONS[mode]:
        notes.append(_CONVERSIONS[mode])
        if mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")  # Pillow's advice for palettes with transparency
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8)), notes
