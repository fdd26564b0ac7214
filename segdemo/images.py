"""Reading user images: every entrance (app, API, CLI, dataset readers) goes through here.

The contract: :func:`load_image` returns an RGB ``PIL.Image`` with EXIF orientation
applied, or raises :class:`ImageError` with a one-line message naming the file and
what to do. It never returns a half-decoded picture.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from segdemo.errors import SegdemoError

MAX_PIXELS = 50_000_000
"""Largest image accepted (width*height); above it Pillow's decompression-bomb guard fires.
Overridable with the environment variable ``SEGDEMO_MAX_PIXELS``."""

MAX_ASPECT_RATIO = 100
"""Longest side / shortest side above which an image is refused: a 10000x8 strip has no
content a segmentation model can see, and resizing it to the model's input would make
one side 0 pixels."""

BACKGROUND = (255, 255, 255)
"""Colour that transparent pixels are composited on."""


class ImageError(SegdemoError):
    """An input that is not a usable image. ``str(err)`` is a one-line, user-facing message."""


def max_pixels() -> int:
    return int(os.environ.get("SEGDEMO_MAX_PIXELS", MAX_PIXELS))


def load_image(
    source: str | os.PathLike | bytes | Image.Image | np.ndarray, name: str | None = None
) -> Image.Image:
    """Open ``source`` as an RGB image.

    Args:
        source: a path, raw file bytes, a PIL image or an ``HxW``/``HxWx{1,3,4}`` array
            (uint8 0..255, or 16-bit/float grey which is rescaled to 0..255).
        name: how to call the image in error messages (default: the path's name).

    Returns:
        ``PIL.Image`` in mode ``"RGB"``, EXIF orientation applied, fully decoded.
        Animated images give their first frame; alpha is composited on white;
        16-bit grey (``I;16``/``I``) is scaled from its own range to 0..255;
        CMYK and palette images are converted with their profiles/palettes.

    Raises:
        ImageError: not an image, truncated, empty, too large, or too elongated.
    """
    label = name or (Path(source).name if isinstance(source, (str, os.PathLike)) else "image")
    if isinstance(source, np.ndarray):
        image = _from_array(source, label)
    elif isinstance(source, Image.Image):
        image = source
    else:
        image = _open(source, label)
    _check_size(image, label)
    try:
        image = ImageOps.exif_transpose(image)
        return to_rgb(image)
    except (OSError, SyntaxError, ValueError) as err:  # truncated data surfaces on decode
        raise ImageError(
            f"{label}: the image data is damaged or truncated ({err}); re-export or re-upload the file"
        ) from None


def _open(source: str | os.PathLike | bytes, label: str) -> Image.Image:
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError(
                f"{label}: the file is empty (0 bytes); upload an image file (PNG, JPEG, WebP, ...)"
            )
        stream = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{label}: no such file ({path})")
        if path.stat().st_size == 0:
            raise ImageError(
                f"{label}: the file is empty (0 bytes); upload an image file (PNG, JPEG, WebP, ...)"
            )
        stream = io.BytesIO(path.read_bytes())
    # Pillow's own bomb guard reads the module-global MAX_IMAGE_PIXELS; changing it per call
    # would race between the app's worker threads, so our (lower) limit is checked here, on
    # the header, before any pixel is decoded. Pillow's guard stays as a backstop.
    limit = max_pixels()
    try:
        image = Image.open(stream)  # lazy: parses the header only
        if image.width * image.height > limit:
            raise Image.DecompressionBombError
        image.load()  # decode now: a truncated file must fail here, not later in a worker
    except Image.DecompressionBombError:
        raise ImageError(
            f"{label}: the image is too large (over {limit:,} pixels); resize it below that and try again"
        ) from None
    except UnidentifiedImageError:
        raise ImageError(
            f"{label}: not an image file Pillow can read; upload a PNG, JPEG, WebP, BMP or TIFF"
        ) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(
            f"{label}: the image data is damaged or truncated ({err}); re-export or re-upload the file"
        ) from None
    return image


def _check_size(image: Image.Image, label: str) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"{label}: the image has no pixels ({width}x{height})")
    if width * height > max_pixels():
        raise ImageError(
            f"{label}: the image is too large ({width}x{height}, over {max_pixels():,} pixels); resize it and try again"
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageError(
            f"{label}: the image is too elongated ({width}x{height}, more than {MAX_ASPECT_RATIO}:1); crop it to a less extreme shape"
        )


def _from_array(array: np.ndarray, label: str) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"{label}: expected an HxW, HxWx3 or HxWx4 array, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = _scale_to_uint8(array.astype(np.float64))
    return Image.fromarray(array)


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Stretch any numeric range to 0..255 (used for 16-bit grey and float arrays)."""
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to ``RGB``; transparency is composited on :data:`BACKGROUND`."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        grey = _scale_to_uint8(np.asarray(image, dtype=np.float64))
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
