"""Colour palettes: constant ``(N, 3) uint8`` RGB tables indexed by class id.

Named palettes (data and provenance in ``segdemo/assets/``):

* ``"ade20k"`` — 150 colours, index = *reduced* ADE20K id (raw value - 1) as the ADE
  models output; index 0 is "wall" (120, 120, 120). Not the 151-entry table with a
  background row that the transformers task guide uses (which shifts every class by one).
* ``"cityscapes"`` — 19 colours, index = Cityscapes trainId.
* ``"coco_panoptic"`` — 133 colours in the order of Mask2Former's COCO-panoptic
  ``id2label`` (80 things, then 53 stuff).
* ``"camvid"`` — 11 colours, the SegNet CamVid classes (void 11 not coloured).
* ``"generated"`` — no fixed table; :func:`generated_palette` colours for any label set.

All colours are RGB, never BGR. Nothing here uses an RNG or ``hash()`` (Python salts
string hashes per process), so a class gets the same colour in every process.
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import dataclass
from importlib import resources

import numpy as np

GENERATED = "generated"

_GOLDEN = 0.6180339887498949  # 1/phi: successive hues land in the largest gap left so far
_SATURATIONS = (0.75, 0.95, 0.55)
_VALUES = (0.95, 0.75, 0.85)
_AVOID_LIMIT = 256
"""Above this many unmatched classes the farthest-point choice (O(k^2)) is skipped."""


class UnknownPaletteError(ValueError):
    """A palette name that is not in :data:`PALETTES`."""


@dataclass(frozen=True)
class Palette:
    """A named palette.

    Attributes:
        name: key in :data:`PALETTES`.
        names: canonical class name per class id (empty for ``"generated"``).
        colors: ``(len(names), 3)`` uint8 RGB, read-only.
        is_thing: per class, ``True`` for countable things (COCO panoptic only), else ``None``.
    """

    name: str
    names: tuple[str, ...]
    colors: np.ndarray
    is_thing: tuple[bool, ...] | None = None


def _load(name: str) -> Palette:
    data = json.loads(resources.files("segdemo").joinpath("assets", f"{name}.json").read_text())
    colors = np.asarray(data["colors"], dtype=np.uint8).reshape(-1, 3)
    colors.flags.writeable = (
        False  # shared constant: a caller's in-place edit would leak everywhere
    )
    is_thing = tuple(data["is_thing"]) if "is_thing" in data else None
    return Palette(name, tuple(data["names"]), colors, is_thing)


def _empty() -> np.ndarray:
    colors = np.zeros((0, 3), np.uint8)
    colors.flags.writeable = False
    return colors


PALETTES: dict[str, Palette] = {
    **{name: _load(name) for name in ("ade20k", "cityscapes", "coco_panoptic", "camvid")},
    GENERATED: Palette(GENERATED, (), _empty()),
}
"""Palette name -> :class:`Palette`. ``"generated"`` has no fixed colours."""


def get_palette(name: str) -> Palette:
    """The :class:`Palette` called ``name``; :class:`UnknownPaletteError` naming the valid ones."""
    try:
        return PALETTES[name]
    except (KeyError, TypeError):
        valid = ", ".join(PALETTES)
        raise UnknownPaletteError(f"unknown palette {name!r}; choose one of: {valid}") from None


def generated_palette(n: int) -> np.ndarray:
    """``n`` deterministic, well-separated colours.

    A golden-ratio walk around the hue circle (each hue falls in the largest gap left by
    the previous ones), cycling through three saturation and three brightness levels so
    that hues that come round again still differ. No black, no white, no grey.
    ``generated_palette(n)[:k] == generated_palette(k)``: adding classes keeps old colours.

    Args:
        n: number of colours, ``>= 0``.

    Returns:
        ``(n, 3)`` uint8 RGB.
    """
    if n < 0:
        raise ValueError(f"palette size must be >= 0, got {n}")
    i = np.arange(n)
    hue = (i * _GOLDEN) % 1.0
    sat = np.asarray(_SATURATIONS)[i % 3]
    val = np.asarray(_VALUES)[(i // 3) % 3]
    return _hsv_to_rgb(hue, sat, val)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised ``colorsys.hsv_to_rgb`` on arrays in [0, 1] -> ``(n, 3)`` uint8."""
    sector = np.floor(h * 6.0).astype(np.int64) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    # rows: sector 0..5; columns: which of (v, t, p, q) feeds r, g, b
    choose = np.array([[0, 1, 2], [3, 0, 2], [2, 0, 1], [2, 3, 0], [1, 2, 0], [0, 2, 3]])
    parts = np.stack([v, t, p, q], axis=-1)
    rgb = np.take_along_axis(parts, choose[sector], axis=-1)
    return np.rint(rgb * 255.0).astype(np.uint8).reshape(-1, 3)


def normalize_name(name: str) -> str:
    """Class name key for matching: case-folded, letters and digits only (``"Traffic_Light "`` -> ``"trafficlight"``)."""
    return "".join(ch for ch in str(name).casefold() if ch.isalnum())


def _name_table(palette: Palette) -> dict[str, int]:
    table: dict[str, int] = {}
    for index, name in enumerate(palette.names):
        table.setdefault(normalize_name(name), index)
    return table


def _match(name: str | None, class_id: int, table: dict[str, int], size: int) -> int | None:
    """Canonical index for a model class, or ``None``."""
    if name is None:
        return None
    if normalize_name(name) == f"label{class_id}":
        # transformers' default names ("LABEL_7") carry no meaning: trust the index
        return class_id if class_id < size else None
    key = normalize_name(name)
    if key in table:
        return table[key]
    # "windowpane, window": try each synonym
    for alternative in str(name).split(","):
        key = normalize_name(alternative)
        if key and key in table:
            return table[key]
    return None


def palette_for(name: str, id2label: dict[int, str]) -> np.ndarray:
    """Colour table for a model's classes, using the named palette where the names allow.

    Each class id takes the colour of the palette class with the same name (compared
    with :func:`normalize_name`, so order, case, spaces and underscores do not matter);
    for a model in the palette's canonical order this is the palette itself.
    transformers' default names ``LABEL_<i>`` take palette colour ``i``. Classes with no
    match, and ids missing from ``id2label``, get generated colours chosen far from the
    colours already in use.

    Args:
        name: a key of :data:`PALETTES`.
        id2label: the model's ``{class_id: name}`` (int or int-like string keys, ``>= 0``).
            Empty: the named palette's own table (``(0, 3)`` for ``"generated"``).

    Returns:
        New ``(N, 3)`` uint8 RGB array, ``N = max(id2label) + 1``.

    Raises:
        UnknownPaletteError: ``name`` is not a known palette.
    """
    palette = get_palette(name)
    labels = {int(k): v for k, v in id2label.items()}
    if any(k < 0 for k in labels):
        raise ValueError(
            f"id2label has negative class ids {sorted(k for k in labels if k < 0)}; class ids start at 0"
        )
    if not labels:
        return palette.colors.copy()
    n = max(labels) + 1
    if name == GENERATED:
        return generated_palette(n)
    table = _name_table(palette)
    size = len(palette.names)
    colors = np.zeros((n, 3), np.uint8)
    unmatched = []
    for class_id in range(n):
        index = _match(labels.get(class_id), class_id, table, size)
        if index is None:
            unmatched.append(class_id)
        else:
            colors[class_id] = palette.colors[index]
    if unmatched:
        used = np.delete(colors, unmatched, axis=0)
        colors[unmatched] = distinct_colors(len(unmatched), avoid=used)
    return colors


def distinct_colors(k: int, avoid: np.ndarray | None = None) -> np.ndarray:
    """``k`` generated colours, each as far as possible from ``avoid`` and from each other.

    Greedy farthest-point choice over a pool of :func:`generated_palette` colours
    (deterministic: ties go to the earliest pool colour). With nothing to avoid, or for
    ``k`` above 256, this is just ``generated_palette(k)``.

    Args:
        k: number of colours wanted.
        avoid: ``(M, 3)`` uint8 colours already taken.

    Returns:
        ``(k, 3)`` uint8 RGB.
    """
    if avoid is None or len(avoid) == 0 or k > _AVOID_LIMIT:
        return generated_palette(k)
    pool = generated_palette(max(1024, 4 * k)).astype(np.float64)
    taken = np.asarray(avoid, dtype=np.float64).reshape(-1, 3)
    nearest = np.min(((pool[:, None, :] - taken[None, :, :]) ** 2).sum(-1), axis=1)
    chosen = []
    for _ in range(k):
        pick = int(np.argmax(nearest))
        chosen.append(pick)
        nearest = np.minimum(nearest, ((pool - pool[pick]) ** 2).sum(-1))
    return pool[chosen].astype(np.uint8)


def shade(
    color: tuple[int, int, int] | np.ndarray, lightness: float = 0.0, hue: float = 0.0
) -> tuple[int, int, int]:
    """``color`` with HLS lightness and hue shifted (``lightness`` in [-1, 1], ``hue`` in turns).

    Lightness is clipped to [0.05, 0.95] so that a shifted colour never collapses to
    black or white. Returns an ``(r, g, b)`` tuple of ints in 0..255.
    """
    r, g, b = (float(c) / 255.0 for c in np.asarray(color).reshape(3))
    h, lum, s = colorsys.rgb_to_hls(r, g, b)
    if lightness:
        lum = min(0.95, max(0.05, lum + lightness))
    r, g, b = colorsys.hls_to_rgb((h + hue) % 1.0, lum, s)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))
