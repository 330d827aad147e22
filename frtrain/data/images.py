"""Decoding image files and bytes into RGB uint8 arrays, with errors that name the file."""

from __future__ import annotations

import io
import os
import re
import struct
import warnings

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from frtrain.errors import DataError, first_line

#: file endings recognised as images when scanning identity folders
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".pbm", ".webp", ".tif", ".tiff")

#: largest image (in pixels, as its header declares) decoded by default: 150 megapixels, above the
#: sensors of today's cameras (108 MP phones), below Pillow's decompression-bomb refusal (179 MP). A header
#: declaring more is a decompression bomb or a corrupt file, treated as an undecodable image.
DEFAULT_MAX_PIXELS = 150_000_000

#: largest image file (bytes) read by default: 100 MB, thousands of times a face crop (~10 KB) and above a
#: 150-megapixel JPEG; a bigger file is refused by its size before it is read (a 1 GiB ".jpg" costs nothing)
DEFAULT_MAX_BYTES = 100_000_000


class CorruptImageError(DataError):
    """An image file that cannot be decoded (truncated, not an image, unsupported)."""


def decode_image(data: bytes, source: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes to an (H, W, 3) uint8 RGB array.

    Grayscale, palette, RGBA/LA (alpha dropped), CMYK and 16-bit PGM/PNG/TIFF are converted to 8-bit RGB
    (16-bit values are scaled by the format's range, 65535 -> 255, so brightness does not depend on the
    image). A truncated or unreadable file, or one whose header declares more than ``max_pixels`` pixels,
    raises :class:`CorruptImageError` naming ``source``.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on damaged EXIF or TIFF tags: the pixels still decode
            return _decode(data, source, max_pixels)
    except CorruptImageError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own refusal, above 2 x its MAX_IMAGE_PIXELS, at open()
        m = re.search(r"\((\d+) pixels\)", str(e))
        declared = f"{int(m.group(1)):,} pixels" if m else "more pixels than Pillow allows"
        raise CorruptImageError(f"{source}: its header declares {declared}, more than data.max_image_pixels="
                                f"{max_pixels:,} (a decompression bomb or a corrupt file)") from None
    except UnidentifiedImageError:
        raise CorruptImageError(f"{source}: cannot decode image (not an image format Pillow reads)") from None
    except (OSError, SyntaxError, ValueError, MemoryError, EOFError, struct.error,
            ZeroDivisionError, IndexError, KeyError, TypeError) as e:
        raise CorruptImageError(f"{source}: cannot decode image ({str(e) or type(e).__name__})") from None


def _decode(data: bytes, source: str, max_pixels: int) -> np.ndarray:
    """:func:`decode_image` without its error translation."""
    with Image.open(io.BytesIO(data)) as img:
        w, h = img.size
        if w * h > max_pixels:
            raise CorruptImageError(f"{source}: its header declares {w}x{h} = {w * h:,} pixels, more than "
                                    f"data.max_image_pixels={max_pixels:,} (a decompression bomb or a corrupt file)")
        img.load()  # raises on truncated data
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float64)
            arr = np.clip(np.rint(arr * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
            return np.repeat(arr[:, :, None], 3, axis=2)
        if img.mode != "RGB":
            img = img.convert("RGB")
        arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise CorruptImageError(f"{source}: decoded to an unexpected shape {arr.shape}")
    return arr


def read_image(path: str, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Read and decode an image file; see :func:`decode_image`. A file over ``max_bytes`` is refused by its size
    before it is read (and no more than ``max_bytes`` are ever read, whatever the file system says)."""
    too_big = (f"{path}: the file is larger than data.max_image_bytes={max_bytes:,} bytes (a face crop is ~10 KB); "
               "not read")
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size > max_bytes:
                raise CorruptImageError(too_big)
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise CorruptImageError(f"{path}: cannot read file ({e.strerror or first_line(e)})") from None
    if len(data) > max_bytes:
        raise CorruptImageError(too_big)
    return decode_image(data, path, max_pixels)


def resize_to(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (H, W, 3) to ``size`` = (H', W') when it differs (area filter down, linear up)."""
    h, w = size
    if img.shape[0] == h and img.shape[1] == w:
        return img
    shrinking = img.shape[0] > h or img.shape[1] > w
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def center_crop(img: np.ndarray, crop: tuple[float, float, float, float] | None) -> np.ndarray:
    """Cut fractions (left, top, right, bottom) off the borders of an (H, W, 3) image, or nothing."""
    if not crop:
        return img
    left, top, right, bottom = crop
    h, w = img.shape[:2]
    y0, y1 = int(round(top * h)), h - int(round(bottom * h))
    x0, x1 = int(round(left * w)), w - int(round(right * w))
    if y1 <= y0 or x1 <= x0:
        raise DataError(f"crop {tuple(crop)} leaves nothing of a {w}x{h} image")
    return img[y0:y1, x0:x1]


#: file endings of the encoded formats a .rec or .bin may carry, by their first bytes
_SIGNATURES = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG\r\n\x1a\n", ".png"), (b"BM", ".bmp"), (b"GIF8", ".gif"),
               (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"), (b"P5", ".pgm"), (b"P6", ".ppm"), (b"P4", ".pbm"),
               (b"P2", ".pgm"), (b"P3", ".ppm"), (b"P1", ".pbm"))


def file_ending(data: bytes) -> str:
    """The file ending of encoded image bytes by their signature (``.jpg``, ``.png``, ``.pgm``, ...; WebP by its
    RIFF header); ``.jpg`` when unknown."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((ext for sig, ext in _SIGNATURES if data.startswith(sig)), ".jpg")


def encode_jpeg(img: np.ndarray, quality: int = 95) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG bytes (deterministic for the same input and library version)."""
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
