"""Bad and odd input files, written on demand: one factory for every entrance's tests.

Each case is a :class:`Case`: a file name, a function writing its bytes, and what must
happen when it is read. ``expect`` is either ``"error"`` (a one-line message naming the
file and containing ``words``) or ``"ok"`` (a valid image, and ``check`` inspects the
decoded RGB array).

    >>> path = write_case(tmp_path, CASES_BY_ID["cmyk"])
    >>> load_image(path)                       # RGB, colours preserved

``SMALL_MAX_PIXELS`` is the ``SEGDEMO_MAX_PIXELS`` the tests set so the "over the
decompression-bomb limit" case is a small file; :func:`real_bomb_png` writes a file that
trips the default 50 MP limit for real (a ~100 KB PNG declaring 8000x8000 pixels).
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

SMALL_MAX_PIXELS = 200_000
"""Pixel cap the tests put in ``SEGDEMO_MAX_PIXELS``: the "bomb" case is 600x400 = 240k."""

SIZE = (96, 64)
"""Width, height of the ordinary test pictures. The checks probe corners and edges only: a
rendered overlay draws its class label over the middle."""


@dataclass(frozen=True)
class Case:
    """One input file and what reading it must give.

    Attributes:
        id: test id.
        name: file name to write (the message must name it).
        make: ``make() -> bytes`` of the file.
        expect: ``"error"`` or ``"ok"``.
        words: for errors, a regex the message must match.
        check: for valid images, ``check(rgb HxWx3 uint8)`` raising AssertionError if wrong.
        size: for valid images, the expected decoded ``(width, height)``.
        probe_overlay: whether ``check`` also holds on a rendered overlay (False where the
            picture is so small that contours and the class label cover all of it).
    """

    id: str
    name: str
    make: Callable[[], bytes]
    expect: str
    words: str = ""
    check: Callable[[np.ndarray], None] | None = field(default=None, repr=False)
    size: tuple[int, int] | None = None
    probe_overlay: bool = True


def write_case(folder: Path, case: Case) -> Path:
    """Write ``case``'s file into ``folder`` and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / case.name
    path.write_bytes(case.make())
    return path


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def gradient(width: int = SIZE[0], height: int = SIZE[1]) -> np.ndarray:
    """``HxWx3`` uint8 RGB with a distinct colour per position (orientation is visible)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack(
        [x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), np.full_like(x, 90)], -1
    ).astype(np.uint8)


# --------------------------------------------------------------------------- writers


def _truncated_jpeg() -> bytes:
    data = encode(Image.fromarray(_noise()), "JPEG", quality=90)
    return data[: len(data) // 3]  # header intact, scan data cut off


def _noise(width: int = 64, height: int = 64) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _grey16() -> bytes:
    # values 1000..3000 of 65535: naive conversion to 8 bit clips to all-white
    ramp = np.linspace(1000, 3000, SIZE[0] * SIZE[1]).reshape(SIZE[1], SIZE[0]).astype(np.uint16)
    return encode(Image.fromarray(ramp), "PNG")


def _cmyk() -> bytes:
    return encode(Image.new("CMYK", SIZE, (0, 255, 255, 0)), "JPEG", quality=95)  # pure red


def _palette_transparent() -> bytes:
    image = Image.new("P", SIZE, 0)
    image.putpalette([0, 0, 0, 0, 200, 0] + [0] * (256 * 3 - 6))  # index 0 black, 1 green
    image.paste(1, (0, 0, SIZE[0] // 2, SIZE[1]))  # left half green, right half index 0
    return encode(image, "PNG", transparency=0)  # index 0 transparent


def _rgba() -> bytes:
    rgba = np.zeros((SIZE[1], SIZE[0], 4), np.uint8)  # fully transparent black...
    rgba[:, : SIZE[0] // 2] = (200, 0, 0, 255)  # ...except an opaque red left half
    return encode(Image.fromarray(rgba, "RGBA"), "PNG")


def _la() -> bytes:
    la = np.zeros((SIZE[1], SIZE[0], 2), np.uint8)  # transparent black
    la[:, : SIZE[0] // 2] = (60, 255)  # opaque dark grey left half
    return encode(Image.fromarray(la, "LA"), "PNG")


def _exif_rotated() -> bytes:
    # stored 48x32, EXIF orientation 6 ("rotate 90 CW to display"): shown 32x48
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.fromarray(gradient()), "JPEG", quality=95, exif=exif.tobytes())


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", SIZE, colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _png(width: int, height: int, colour=(10, 200, 30)) -> bytes:
    return encode(Image.new("RGB", (width, height), colour), "PNG")


def real_bomb_png(width: int = 8000, height: int = 8000) -> bytes:
    """A 1-bit PNG declaring ``width x height`` pixels in ~100 KB (all zero, compressed).

    Over Pillow's default bomb guard (89 MP warns, 179 MP errors) only for huge sizes; with
    segdemo's 50 MP default 8000x8000 = 64 MP is refused before any pixel is decoded.
    """
    raw = b"".join(b"\x00" + bytes((width + 7) // 8) for _ in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")
        )

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------- checks


def _is_rgb_close(pixel, expected, tolerance: int = 12) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, int) - np.asarray(expected, int)) <= tolerance))


def _check_one_pixel(rgb: np.ndarray) -> None:
    assert _is_rgb_close(rgb[0, 0], (10, 200, 30), 0), rgb[0, 0]


def _check_grey16(rgb: np.ndarray) -> None:
    # stretched over 0..255, grey, increasing along the ramp: not clipped white
    edges = np.concatenate([rgb[0], rgb[-1]])
    assert (edges[:, 0] == edges[:, 1]).all() and (edges[:, 1] == edges[:, 2]).all()
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255, (rgb[0, 0], rgb[-1, -1])
    assert (np.diff(rgb[0, :, 0].astype(int)) >= 0).all() and rgb[0, -1, 0] < rgb[-1, 0, 0]


def _check_cmyk(rgb: np.ndarray) -> None:
    for corner in (rgb[0, 0], rgb[-1, -1]):
        assert _is_rgb_close(corner, (255, 0, 0), 20), corner


def _check_half(left, right) -> Callable[[np.ndarray], None]:
    def check(rgb: np.ndarray) -> None:
        assert _is_rgb_close(rgb[2, 2], left, 0), rgb[2, 2]
        # transparent pixels composited on white, not on black
        assert _is_rgb_close(rgb[2, -3], right, 0), rgb[2, -3]

    return check


def _check_rotated(rgb: np.ndarray) -> None:
    # orientation 6: the stored top-left corner (red 0, green 0) shows at the top-right;
    # the stored top-right (red 255) at the bottom-right
    stored = gradient()
    assert rgb.shape[:2] == (SIZE[0], SIZE[1]), rgb.shape
    assert _is_rgb_close(rgb[0, -1], stored[0, 0], 16), (rgb[0, -1], stored[0, 0])
    assert _is_rgb_close(rgb[-1, -1], stored[0, -1], 16), (rgb[-1, -1], stored[0, -1])


def _check_first_frame(rgb: np.ndarray) -> None:
    assert _is_rgb_close(rgb[5, 5], (255, 0, 0), 8), rgb[5, 5]


def _check_rgb(rgb: np.ndarray) -> None:
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3


# --------------------------------------------------------------------------- the table

# one row per input: what reading it must give
CASES = [
    # bytes that are no image at all
    Case(
        "not-an-image",
        "notes.png",
        lambda: b"these bytes are not an image\n" * 4,
        "error",
        "not an image",
    ),
    # a JPEG cut off after its header: must fail at decode, not half-decoded later
    Case("truncated-jpeg", "cut.jpg", _truncated_jpeg, "error", "damaged or truncated"),
    # an empty upload
    Case("zero-bytes", "empty.png", lambda: b"", "error", "empty"),
    # a single pixel is a valid image: processed, colour intact
    Case(
        "one-pixel",
        "dot.png",
        lambda: _png(1, 1),
        "ok",
        check=_check_one_pixel,
        size=(1, 1),
        probe_overlay=False,
    ),
    # 16-bit grey: stretched to 0..255, not clipped to white
    Case("grey16", "depth.png", _grey16, "ok", check=_check_grey16, size=SIZE),
    # CMYK JPEG: converted to RGB with the right colours
    Case("cmyk", "print.jpg", _cmyk, "ok", check=_check_cmyk, size=SIZE),
    # palette PNG with a transparent index: transparent part on white
    Case(
        "palette-transparent",
        "palette.png",
        _palette_transparent,
        "ok",
        check=_check_half((0, 200, 0), (255, 255, 255)),
        size=SIZE,
    ),
    # RGBA: transparent half composited on white, opaque half as is
    Case(
        "rgba", "alpha.png", _rgba, "ok", check=_check_half((200, 0, 0), (255, 255, 255)), size=SIZE
    ),
    # grey + alpha: same rule
    Case(
        "la",
        "grey-alpha.png",
        _la,
        "ok",
        check=_check_half((60, 60, 60), (255, 255, 255)),
        size=SIZE,
    ),
    # EXIF orientation 6: comes out rotated (portrait), pixels where a viewer shows them
    Case(
        "exif-rotated",
        "phone.jpg",
        _exif_rotated,
        "ok",
        check=_check_rotated,
        size=(SIZE[1], SIZE[0]),
    ),
    # animated GIF: the first frame
    Case("animated-gif", "anim.gif", _animated_gif, "ok", check=_check_first_frame, size=SIZE),
    # over the pixel cap (SEGDEMO_MAX_PIXELS=SMALL_MAX_PIXELS in the tests): refused, no decode
    Case("over-pixel-limit", "huge.png", lambda: _png(600, 400), "error", "too large"),
    # a 10000x8 strip: refused as too elongated (a model input side would round to 0)
    Case("strip-10000x8", "strip.png", lambda: _png(10000, 8), "error", "elongated"),
]
CASES_BY_ID = {case.id: case for case in CASES}
ERROR_CASES = [c for c in CASES if c.expect == "error"]
VALID_CASES = [c for c in CASES if c.expect == "ok"]


def check_valid(case: Case, rgb: np.ndarray) -> None:
    """Assert that ``rgb`` (HxWx3 uint8) is ``case``'s picture decoded correctly."""
    _check_rgb(rgb)
    assert (rgb.shape[1], rgb.shape[0]) == case.size, (rgb.shape, case.size)
    case.check(rgb)
