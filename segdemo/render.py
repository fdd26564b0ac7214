"""Rendering a :class:`~segdemo.result.SegmentationResult` as a picture: pure functions on arrays.

Conventions: images are ``HxWx3`` uint8 RGB; palettes are ``(N, 3)`` uint8 RGB tables
indexed by class id (see :mod:`segdemo.palettes`); colours are ``(r, g, b)`` int tuples.
Nothing here mutates its inputs, and nothing makes one full-image pass per class: colours
come from table lookups (``table[label_map]``), contours from comparing shifted arrays,
label positions from one distance transform of a downsampled label map.

Output of :func:`render`: ``(H, W + legend_width(H, W), 3)`` with the legend, else
``(H, W, 3)``, where ``H, W`` is the input size.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from segdemo.palettes import distinct_colors, shade
from segdemo.result import Segment, SegmentationResult, Task

Color = tuple[int, int, int]

PLACEMENT_SIDE = 512
"""Label positions are found on the label map subsampled to about this long side (speed at 12 MP)."""

_FONT_DIVISOR = 55  # font pixel size = long side / 55: ~18 px on a 1000 px display of any photo
_MIN_FONT = 10
_LEGEND_EMS = 13  # legend strip width in font sizes: swatch + ~18 characters
_CHUNK_PIXELS = 1 << 20  # blend 1 MP at a time: float32 temporaries stay ~12 MB at 12 MP
_DARKEN = 0.55  # contour and box-outline shade: colour * 0.55
_LEGEND_BACKGROUND = (255, 255, 255)
_LEGEND_TEXT = (0, 0, 0)

# Instance colour variations: (HLS lightness shift, hue shift in turns), tried cheapest first.
_OFFSETS = sorted(
    ((dl / 20, dh / 50) for dl in range(-7, 8) for dh in range(-6, 7)),
    key=lambda o: (abs(o[0]) / 0.1 + abs(o[1]) / 0.04, -o[0], -o[1]),
)
_INSTANCE_SEPARATION = (28.0, 12.0, 1.0)  # RGB distances demanded in turn, loosest last


class RenderError(ValueError):
    """Inputs that cannot be rendered together (wrong shapes, dtypes or palette)."""


def to_hex(color: Color | np.ndarray) -> str:
    """``(r, g, b)`` in 0..255 -> ``"#rrggbb"`` (6-digit lower-case hex, as gradio wants)."""
    r, g, b = (int(c) for c in np.asarray(color).reshape(3))
    if not all(0 <= c <= 255 for c in (r, g, b)):
        raise RenderError(f"colour {(r, g, b)} is outside 0..255; pass 8-bit RGB values")
    return f"#{r:02x}{g:02x}{b:02x}"


def _as_palette(palette: np.ndarray) -> np.ndarray:
    array = np.asarray(palette)
    if array.ndim != 2 or array.shape[1] != 3:
        raise RenderError(
            f"palette must be (N, 3) RGB, got shape {array.shape}; use segdemo.palettes.palette_for"
        )
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.integer) or (
            array.size and (array.min() < 0 or array.max() > 255)
        ):
            raise RenderError(
                f"palette must hold 0..255 integers, got dtype {array.dtype}; use segdemo.palettes.palette_for"
            )
        array = array.astype(np.uint8)
    return array


def _as_label_map(label_map: np.ndarray) -> np.ndarray:
    array = np.asarray(label_map)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise RenderError(
            f"label map must be an HxW integer array, got {array.dtype} of shape {array.shape}"
        )
    if array.size and array.min() < 0:
        raise RenderError("label map has negative ids; ids must be >= 0")
    return array


def _fit(palette: np.ndarray, n: int) -> np.ndarray:
    """``palette`` extended with generated colours (far from its own) to at least ``n`` rows."""
    if len(palette) >= n:
        return palette
    return np.concatenate([palette, distinct_colors(n - len(palette), avoid=palette)])


def colorize(label_map: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Colour image of a label map: ``palette[label_map]``, one table lookup.

    Args:
        label_map: ``HxW`` integer ids in ``0..N-1``.
        palette: ``(N, 3)`` uint8 RGB.

    Returns:
        New ``HxWx3`` uint8 RGB array.

    Raises:
        RenderError: an id outside the palette, or wrong shapes/dtypes.
    """
    label_map = _as_label_map(label_map)
    palette = _as_palette(palette)
    if label_map.size and int(label_map.max()) >= len(palette):
        raise RenderError(
            f"label map has id {int(label_map.max())} but the palette has {len(palette)} colours; "
            "build the palette with palette_for(name, id2label) covering every id"
        )
    return np.take(palette, label_map, axis=0)


def draw_order(result: SegmentationResult) -> list[Segment]:
    """Segments in drawing order: stuff (and semantic regions) before things, large before small.

    Ties are broken by segment id, so the order is deterministic.
    """
    return sorted(result.segments, key=lambda s: (bool(s.is_thing), -s.area, s.id))


def _class_colors(result: SegmentationResult, palette: np.ndarray) -> np.ndarray:
    top = max((s.label_id for s in result.segments), default=-1)
    return _fit(_as_palette(palette), top + 1)


def segment_colors(result: SegmentationResult, palette: np.ndarray) -> dict[int, Color]:
    """Display colour of every segment, keyed by ``Segment.id``.

    Semantic regions and panoptic stuff (``is_thing is False``) take their class colour.
    Instances (instance task; panoptic things) of one class are ranked by area (largest
    first, then id): rank 0 takes the class colour, later ranks the nearest HLS
    lightness/hue variation of it that stays at least 28 (then 12, then 1) RGB units
    from the colours already given to that class. Deterministic; no RNG.

    Args:
        result: any task's result; ``label_id`` must index ``palette`` (missing rows are
            filled with generated colours).
        palette: ``(N, 3)`` uint8 RGB class colours.

    Returns:
        ``{segment_id: (r, g, b)}``.
    """
    colors = _class_colors(result, palette)
    out: dict[int, Color] = {}
    instances: dict[int, list[Segment]] = {}
    for seg in result.segments:
        if result.task == Task.SEMANTIC or seg.is_thing is False:
            out[seg.id] = tuple(int(c) for c in colors[seg.label_id])
        else:
            instances.setdefault(seg.label_id, []).append(seg)
    for label_id, segs in instances.items():
        segs.sort(key=lambda s: (-s.area, s.id))
        for seg, color in zip(segs, _variations(colors[label_id], len(segs)), strict=True):
            out[seg.id] = color
    return out


def _variations(base: np.ndarray, k: int) -> list[Color]:
    """``k`` distinct colours near ``base``; the first is ``base`` itself."""
    candidates = [shade(base, dl, dh) for dl, dh in _OFFSETS]
    chosen: list[Color] = []
    for separation in _INSTANCE_SEPARATION:
        for color in candidates:
            if len(chosen) == k:
                return chosen
            if all(math.dist(color, c) >= separation for c in chosen):
                chosen.append(color)
    # more instances than distinct variations (hundreds of one class): repeat the cycle
    return [chosen[i % len(chosen)] for i in range(k)]


def label_positions(result: SegmentationResult) -> dict[int, tuple[int, int]]:
    """A point inside every segment, as far from its boundary as possible: ``{id: (x, y)}``.

    The deepest pixel (distance-transform maximum) of the segment, found on the label map
    subsampled by an integer step to about :data:`PLACEMENT_SIDE` on the long side; a
    subsampled pixel is an original pixel, so the point always lies in the segment, also
    for rings and C shapes whose centroid is outside. It sits in the segment's thickest
    part, normally its largest component. Segments too small to survive subsampling are
    placed at full resolution inside their bounding box; segments with ``area == 0`` get none.
    """
    label_map = _as_label_map(result.label_map)
    if not result.segments or label_map.size == 0:
        return {}
    height, width = label_map.shape
    step = max(1, math.ceil(max(height, width) / PLACEMENT_SIDE))
    small = label_map[::step, ::step]
    depth = _depth(small)
    ids = [s.id for s in result.segments]
    present = np.zeros(max(max(ids), int(small.max())) + 1, bool)
    present[np.unique(small)] = True
    found = [i for i in ids if present[i]]
    positions: dict[int, tuple[int, int]] = {}
    if found:
        for seg_id, (row, col) in zip(
            found, ndimage.maximum_position(depth, small, found), strict=True
        ):
            positions[seg_id] = (int(col) * step, int(row) * step)
    for seg in result.segments:
        if seg.id not in positions and seg.area > 0:
            point = _small_segment_point(label_map, seg)
            if point is not None:
                positions[seg.id] = point
    return positions


def _edges(label_map: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Bool map of pixels within ``thickness`` of a label change, on both sides of it."""
    edge = np.zeros(label_map.shape, bool)
    t = thickness
    if label_map.shape[1] > t:
        diff = label_map[:, t:] != label_map[:, :-t]
        edge[:, t:] |= diff
        edge[:, :-t] |= diff
    if label_map.shape[0] > t:
        diff = label_map[t:, :] != label_map[:-t, :]
        edge[t:, :] |= diff
        edge[:-t, :] |= diff
    return edge


def _depth(label_map: np.ndarray) -> np.ndarray:
    """Distance of each pixel to the nearest label change or image border."""
    inside = np.pad(~_edges(label_map), 1, constant_values=False)
    return ndimage.distance_transform_edt(inside)[1:-1, 1:-1]


def _small_segment_point(label_map: np.ndarray, seg: Segment) -> tuple[int, int] | None:
    x0, y0, x1, y1 = seg.bbox
    mask = label_map[y0:y1, x0:x1] == seg.id
    if not mask.any():  # bbox disagrees with the map: search everywhere (rare, slow path)
        x0 = y0 = 0
        mask = label_map == seg.id
        if not mask.any():
            return None
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return x0 + int(col), y0 + int(row)


def legend_entries(result: SegmentationResult, palette: np.ndarray) -> list[tuple[int, str, Color]]:
    """Classes present, largest total area first: ``[(label_id, name, (r, g, b))]``.

    One entry per class however many segments it has, in its plain class colour;
    segments with ``area == 0`` do not count.
    """
    colors = _class_colors(result, palette)
    area: dict[int, int] = {}
    names: dict[int, str] = {}
    for seg in result.segments:
        if seg.area <= 0:  # reported by a post-processor, then covered by later segments
            continue
        area[seg.label_id] = area.get(seg.label_id, 0) + seg.area
        names.setdefault(seg.label_id, seg.label)
    order = sorted(area, key=lambda i: (-area[i], i))
    return [(i, names[i], tuple(int(c) for c in colors[i])) for i in order]


def font_size(height: int, width: int) -> int:
    """Label and legend font size in pixels for an ``height x width`` image."""
    return max(_MIN_FONT, round(max(height, width) / _FONT_DIVISOR))


def legend_width(height: int, width: int) -> int:
    """Width in pixels of the legend strip :func:`render` appends on the right."""
    return _LEGEND_EMS * font_size(height, width)


def contour_thickness(height: int, width: int) -> int:
    """Contour band width in pixels on each side of a boundary: 1 up to ~2200 px long side, 3 at 4000."""
    return max(1, round(max(height, width) / 1500))


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        return ImageFont.truetype(str(path), size)
    except (ImportError, OSError):  # no matplotlib: Pillow's built-in font, still offline
        return ImageFont.load_default(size)


def _darker(color: Color | np.ndarray) -> Color:
    return tuple(int(c * _DARKEN) for c in np.asarray(color).reshape(3))


def _text_color(fill: Color) -> Color:
    r, g, b = fill
    # ITU-R BT.601 luma: black text on light boxes, white on dark ones
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def render(
    image: np.ndarray,
    result: SegmentationResult,
    palette: np.ndarray,
    *,
    alpha: float = 0.5,
    contours: bool = True,
    labels: bool = True,
    legend: bool = True,
) -> np.ndarray:
    """Overlay a segmentation on its image.

    * Fill: every covered pixel becomes ``(1 - alpha) * image + alpha * colour``, rounded
      half to even; colours from :func:`segment_colors`. Instance/panoptic label 0 (no
      segment) and ids without a segment keep the image's pixels exactly.
    * Contours: pixels within :func:`contour_thickness` of a boundary of ``label_map``,
      inside covered regions, opaque in the region colour * 0.55.
    * Labels: class name (and score as a percentage when there is one) at
      :func:`label_positions`, on an opaque box in the segment colour with black or white
      text, drawn in :func:`draw_order` (stuff first, large before small, so small things
      stay readable on top). Font: matplotlib's DejaVu Sans, :func:`font_size` pixels.
    * Legend: a white strip :func:`legend_width` pixels wide appended on the right,
      listing :func:`legend_entries` (swatch + name) top to bottom; entries that do not
      fit are summarised as ``+N more``.

    Args:
        image: ``HxWx3`` uint8 RGB, the picture the result was computed on.
        result: segmentation with an ``HxW`` ``label_map``.
        palette: ``(N, 3)`` uint8 RGB class colours (:func:`segdemo.palettes.palette_for`);
            class ids beyond it get generated colours.
        alpha: fill opacity in ``[0, 1]``.

    Returns:
        New uint8 RGB array, ``(H, W + legend_width(H, W), 3)`` with ``legend=True``,
        else ``(H, W, 3)``.

    Raises:
        RenderError: mismatched sizes, wrong dtypes, alpha outside [0, 1].
    """
    image = np.asarray(image)
    label_map = _as_label_map(result.label_map)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise RenderError(
            f"image must be HxWx3 uint8 RGB, got {image.dtype} of shape {image.shape}; use segdemo.images.load_image"
        )
    if image.shape[:2] != label_map.shape:
        raise RenderError(
            f"image is {image.shape[1]}x{image.shape[0]} but the label map is {label_map.shape[1]}x{label_map.shape[0]}; "
            "pass the image the result was computed on"
        )
    if not 0.0 <= float(alpha) <= 1.0:
        raise RenderError(f"alpha must be in [0, 1], got {alpha}")
    height, width = label_map.shape
    colors = segment_colors(result, palette)
    top = int(label_map.max()) if label_map.size else 0
    if result.task == Task.SEMANTIC:
        table = _fit(_class_colors(result, palette), top + 1)
        covered = np.ones(len(table), bool)
    else:
        table = np.zeros((top + 1, 3), np.uint8)
        covered = np.zeros(top + 1, bool)  # False = untouched: label 0 and ids without a segment
        for seg_id, color in colors.items():
            if seg_id <= top:
                table[seg_id] = color
                covered[seg_id] = True
    extra = legend_width(height, width) if legend else 0
    canvas = np.empty((height, width + extra, 3), np.uint8)
    thickness = contour_thickness(height, width) if contours else 0
    _blend(image, label_map, table, covered, alpha, thickness, out=canvas[:, :width])
    if labels or legend:
        font = _font(font_size(height, width))
    if labels:
        _draw_labels(canvas, font, result, colors, width, height)
    if legend:
        canvas[:, width:] = _legend_strip(font, legend_entries(result, palette), height, extra)
    return canvas


def _blend(
    image: np.ndarray,
    label_map: np.ndarray,
    table: np.ndarray,
    covered: np.ndarray,
    alpha: float,
    thickness: int,
    out: np.ndarray,
) -> None:
    """Fill ``out`` with the overlay, in row chunks of about a megapixel.

    Contour pixels index a second half of the colour table (the darkened colours, opacity 1),
    so fill and contours are one lookup: no boolean scatter over the full image.
    """
    height, width = label_map.shape
    n = len(table)
    colors = np.concatenate([table, (table * _DARKEN).astype(np.uint8)]).astype(np.float32)
    opacity = np.concatenate([np.where(covered, alpha, 0.0), covered.astype(np.float64)]).astype(
        np.float32
    )
    rows = max(1, _CHUNK_PIXELS // max(1, width))
    uniform = not thickness and bool(covered.all())  # plain semantic overlay: one scalar alpha
    alpha = np.float32(alpha)
    for y in range(0, height, rows):
        y1 = min(height, y + rows)
        labels = label_map[y:y1]
        if thickness:
            # edges within `thickness` rows need the neighbouring rows too
            lo, hi = max(0, y - thickness), min(height, y1 + thickness)
            edge = _edges(label_map[lo:hi], thickness)[y - lo : y1 - lo]
            labels = labels + n * edge
        base = image[y:y1].astype(np.float32)
        color = np.take(colors, labels, axis=0)
        color -= base
        color *= alpha if uniform else np.take(opacity, labels)[..., None]
        color += base
        np.rint(color, out=color)
        out[y:y1] = color


def _draw_labels(
    canvas: np.ndarray,
    font,
    result: SegmentationResult,
    colors: dict[int, Color],
    width: int,
    height: int,
) -> None:
    """Draw each label box on a small tile of ``canvas`` (no full-image PIL round trip)."""
    positions = label_positions(result)
    pad = max(1, font.size // 5)
    for seg in draw_order(result):
        if seg.id not in positions:
            continue
        x, y = positions[seg.id]
        text = seg.label if seg.score is None else f"{seg.label} {seg.score:.0%}"
        left, top, right, bottom = font.getbbox(text)
        box_w, box_h = right - left + 2 * pad, bottom - top + 2 * pad
        # centred on the point, shifted to stay inside the image (not over the legend)
        x0 = max(0, min(x - box_w // 2, width - box_w))
        y0 = max(0, min(y - box_h // 2, height - box_h))
        x1, y1 = min(width, x0 + box_w), min(height, y0 + box_h)
        fill = colors[seg.id]
        tile = Image.fromarray(np.ascontiguousarray(canvas[y0:y1, x0:x1]))
        draw = ImageDraw.Draw(tile)
        draw.rectangle((0, 0, box_w - 1, box_h - 1), fill=fill, outline=_darker(fill))
        draw.text((pad - left, pad - top), text, fill=_text_color(fill), font=font)
        canvas[y0:y1, x0:x1] = np.asarray(tile)


def _legend_strip(
    font, entries: list[tuple[int, str, Color]], height: int, width: int
) -> np.ndarray:
    """``height x width`` legend: swatch + name per entry, top to bottom, ``+N more`` when full."""
    strip = Image.new("RGB", (width, height), _LEGEND_BACKGROUND)
    draw = ImageDraw.Draw(strip)
    size = font.size
    pad = max(1, size // 2)
    row = round(size * 1.5)
    fits = max(0, (height - pad) // row)
    shown = entries if len(entries) <= fits else entries[: max(0, fits - 1)]
    text_x = pad + size + pad
    room = width - pad - text_x
    lines = [(name, color) for _, name, color in shown]
    if len(shown) < len(entries) and fits > 0:
        lines.append((f"+{len(entries) - len(shown)} more", None))
    for i, (name, color) in enumerate(lines):
        y = pad + i * row
        if color is not None:
            draw.rectangle(
                (pad, y, pad + size - 1, y + size - 1), fill=color, outline=_darker(color)
            )
        text = _fit_text(draw, name, font, room)
        draw.text((text_x, y + size // 2), text, fill=_LEGEND_TEXT, font=font, anchor="lm")
    return np.asarray(strip)


def _fit_text(draw, text: str, font, room: int) -> str:
    if draw.textlength(text, font=font) <= room:
        return text
    while text and draw.textlength(text + "…", font=font) > room:
        text = text[:-1]
    return text + "…"
