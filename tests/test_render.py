"""Rendering: exact colours and alpha arithmetic on small synthetic maps, label placement,
legend contents, instance colours, drawing order, purity and input checks."""

import math

import numpy as np
import pytest

from segdemo.render import (
    RenderError,
    colorize,
    contour_thickness,
    draw_order,
    label_positions,
    legend_entries,
    legend_width,
    render,
    segment_colors,
    to_hex,
)
from segdemo.result import Segment, SegmentationResult, Task, region_stats, segments_from_label_map

PALETTE = np.array([[200, 0, 0], [0, 200, 0], [0, 0, 200], [250, 250, 0]], np.uint8)
NAMES = {0: "red", 1: "green", 2: "blue", 3: "yellow"}


def semantic(label_map: np.ndarray, id2label: dict[int, str] | None = None) -> SegmentationResult:
    label_map = np.asarray(label_map, np.int32)
    id2label = id2label or NAMES
    return SegmentationResult(
        Task.SEMANTIC, label_map, segments_from_label_map(label_map, id2label), id2label
    )


def instances(
    label_map: np.ndarray, classes: dict[int, int], task=Task.INSTANCE, stuff=()
) -> SegmentationResult:
    """Instance/panoptic result: ``classes`` maps segment id -> class id; ids in ``stuff`` are stuff."""
    label_map = np.asarray(label_map, np.int32)
    segments = []
    for seg_id, area, bbox in region_stats(label_map):
        if seg_id == 0:
            continue
        label_id = classes[seg_id]
        is_thing = None if task == Task.INSTANCE else seg_id not in stuff
        segments.append(Segment(seg_id, NAMES[label_id], label_id, 0.9, area, bbox, is_thing))
    return SegmentationResult(task, label_map, segments, NAMES)


def plain(image, result, palette=PALETTE, alpha=0.5):
    return render(image, result, palette, alpha=alpha, contours=False, labels=False, legend=False)


@pytest.mark.parametrize(
    ("color", "expected"),
    [
        ((0, 0, 0), "#000000"),
        ((255, 128, 1), "#ff8001"),
        (np.array([16, 32, 48], np.uint8), "#102030"),
    ],
)
def test_to_hex(color, expected):
    assert to_hex(color) == expected


@pytest.mark.parametrize("color", [(256, 0, 0), (-1, 0, 0)])
def test_to_hex_rejects_out_of_range(color):
    with pytest.raises(RenderError):
        to_hex(color)


@pytest.mark.parametrize(
    "label_map",
    [
        [[0, 1], [2, 3]],  # every class once
        [[3]],  # 1x1
        [[1, 1, 1]],  # one class
        np.zeros((0, 5), np.int64),  # empty
    ],
)
def test_colorize_exact(label_map):
    label_map = np.asarray(label_map, np.int64)
    out = colorize(label_map, PALETTE)
    assert out.shape == label_map.shape + (3,) and out.dtype == np.uint8
    for (y, x), value in np.ndenumerate(label_map):
        assert tuple(out[y, x]) == tuple(PALETTE[value])


def test_colorize_matches_guide_loop():
    # the transformers guide's per-class loop, the baseline bench/bench_render.py times
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, (150, 3), dtype=np.uint8)
    seg = rng.integers(0, 150, (37, 53))
    color_seg = np.zeros(seg.shape + (3,), np.uint8)
    for label, color in enumerate(palette):
        color_seg[seg == label, :] = color
    assert np.array_equal(colorize(seg, palette), color_seg)


@pytest.mark.parametrize(
    ("label_map", "palette"),
    [
        ([[0, 4]], PALETTE),  # id 4 beyond a 4-colour palette
        ([[-1]], PALETTE),  # negative id
        ([[0.0]], PALETTE),  # float map
        ([0, 1], PALETTE),  # not 2-D
        ([[0]], PALETTE[:, :2]),  # palette not (N, 3)
        ([[0]], PALETTE.astype(np.float32)),  # palette not integer
    ],
)
def test_colorize_bad_input(label_map, palette):
    with pytest.raises(RenderError):
        colorize(np.asarray(label_map), palette)


@pytest.mark.parametrize(
    ("alpha", "pixel", "color", "expected"),
    [
        (0.5, (100, 100, 100), (200, 0, 0), (150, 50, 50)),
        (0.25, (100, 40, 8), (200, 0, 0), (125, 30, 6)),
        (0.0, (37, 38, 39), (200, 0, 0), (37, 38, 39)),  # alpha 0: the image unchanged
        (1.0, (37, 38, 39), (200, 0, 0), (200, 0, 0)),  # alpha 1: the palette colour
        (0.5, (0, 11, 13), (255, 0, 0), (128, 6, 6)),  # ties round half to even: 127.5, 5.5, 6.5
        (0.3, (10, 20, 30), (200, 0, 0), (67, 14, 21)),  # 0.7*10+0.3*200=67; 14; 21
    ],
)
def test_alpha_arithmetic(alpha, pixel, color, expected):
    image = np.empty((2, 3, 3), np.uint8)
    image[:] = pixel
    palette = PALETTE.copy()
    palette[1] = color
    out = plain(image, semantic(np.ones((2, 3))), palette, alpha)
    assert out.shape == (2, 3, 3)
    assert {tuple(p) for p in out.reshape(-1, 3)} == {expected}


def test_alpha_per_pixel_class():
    image = np.full((1, 4, 3), 100, np.uint8)
    out = plain(image, semantic([[0, 1, 2, 3]]), alpha=0.5)
    # 0.5 * 100 + 0.5 * c, with halves rounded to even
    assert out[0].tolist() == [[150, 50, 50], [50, 150, 50], [50, 50, 150], [175, 175, 50]]


def test_instance_background_untouched():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    label_map = np.zeros((6, 7), np.int32)
    label_map[1:4, 1:4] = 1
    label_map[4:, 5:] = 2
    label_map[0, 6] = 9  # an id with no segment: left alone too
    result = instances(label_map, {1: 0, 2: 1, 9: 0})
    result.segments = [s for s in result.segments if s.id != 9]
    out = plain(image, result, alpha=0.5)
    untouched = (label_map == 0) | (label_map == 9)
    assert np.array_equal(out[untouched], image[untouched])
    assert not np.array_equal(out[label_map == 1], image[label_map == 1])


def test_contours_thin_darker_and_inside_segments():
    image = np.zeros((4, 6, 3), np.uint8)
    label_map = np.zeros((4, 6), np.int32)
    label_map[:, 3:] = 1  # boundary between columns 2 and 3
    out = render(
        image, semantic(label_map), PALETTE, alpha=0.0, contours=True, labels=False, legend=False
    )
    dark0 = tuple(int(c * 0.55) for c in PALETTE[0])
    dark1 = tuple(int(c * 0.55) for c in PALETTE[1])
    assert {tuple(p) for p in out[:, 2]} == {
        dark0
    }  # one pixel each side, in its own region's shade
    assert {tuple(p) for p in out[:, 3]} == {dark1}
    assert not out[:, [0, 1, 4, 5]].any()  # alpha 0 elsewhere: the (black) image


def test_contours_skip_background_of_instances():
    image = np.zeros((5, 5, 3), np.uint8)
    label_map = np.zeros((5, 5), np.int32)
    label_map[1:4, 1:4] = 1
    out = render(
        image,
        instances(label_map, {1: 2}),
        PALETTE,
        alpha=0.0,
        contours=True,
        labels=False,
        legend=False,
    )
    assert not out[label_map == 0].any()  # the outline stays inside the instance
    ring = (label_map == 1) & ~np.pad(np.ones((1, 1), bool), 2)
    assert {tuple(p) for p in out[ring]} == {tuple(int(c * 0.55) for c in PALETTE[2])}


@pytest.mark.parametrize(
    ("size", "thickness"), [((1, 1), 1), ((480, 640), 1), ((1080, 1920), 1), ((3000, 4000), 3)]
)
def test_contour_thickness(size, thickness):
    assert contour_thickness(*size) == thickness


def _ring(n: int) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n]
    r = np.hypot(yy - n / 2, xx - n / 2)
    return ((r > n * 0.3) & (r < n * 0.4)).astype(np.int32)


def _c_shape(n: int) -> np.ndarray:
    m = _ring(n)
    m[int(n * 0.4) : int(n * 0.6), n // 2 :] = 0  # open on the right
    return m


def _two_blobs(n: int) -> np.ndarray:
    m = np.zeros((n, n), np.int32)
    m[: n // 2, : n // 2] = 1  # large component
    m[-3:, -3:] = 1  # small component
    return m


def _tiny_dot(n: int) -> np.ndarray:
    m = np.zeros((n, n), np.int32)
    m[n // 2 + 1 : n // 2 + 3, n // 3 + 1 : n // 3 + 3] = 1  # 2x2: vanishes when subsampled
    return m


@pytest.mark.parametrize(
    ("name", "build", "size", "centroid_outside"),
    [
        ("ring", _ring, 60, True),
        ("c-shape", _c_shape, 60, True),
        ("ring at 2000 px (subsampled)", _ring, 2000, True),
        ("c-shape at 1500 px", _c_shape, 1500, True),
        ("two components", _two_blobs, 40, False),
        ("diagonal line", lambda n: np.eye(n, dtype=np.int32), 30, False),
        ("2x2 dot at 3000 px", _tiny_dot, 3000, False),
        ("1x1", lambda n: np.ones((n, n), np.int32), 1, False),
    ],
)
def test_label_position_inside_region(name, build, size, centroid_outside):
    label_map = build(size)
    result = semantic(label_map, {0: "outside", 1: "shape"})
    positions = label_positions(result)
    assert set(positions) == {s.id for s in result.segments}
    for seg_id, (x, y) in positions.items():
        assert label_map[y, x] == seg_id, (name, seg_id, (x, y))
    if centroid_outside:  # the naive choice would fail here
        ys, xs = np.nonzero(label_map == 1)
        assert label_map[round(ys.mean()), round(xs.mean())] != 1


def test_label_position_prefers_largest_component():
    label_map = _two_blobs(40)
    x, y = label_positions(semantic(label_map, {0: "bg", 1: "blob"}))[1]
    assert x < 20 and y < 20


def test_label_position_is_deep_inside():
    # a 20x20 square in a 60x60 map: the label goes near its centre, not on its edge
    label_map = np.zeros((60, 60), np.int32)
    label_map[10:30, 30:50] = 1
    x, y = label_positions(semantic(label_map, {0: "bg", 1: "square"}))[1]
    assert abs(x - 39.5) <= 1 and abs(y - 19.5) <= 1


def test_legend_entries_exactly_classes_present():
    label_map = np.zeros((10, 10), np.int32)
    label_map[:, 6:] = 3
    label_map[0, 0] = 2
    entries = legend_entries(semantic(label_map), PALETTE)
    # largest first; class 1 (absent) is not listed
    assert entries == [
        (0, "red", (200, 0, 0)),
        (3, "yellow", (250, 250, 0)),
        (2, "blue", (0, 0, 200)),
    ]


def test_legend_one_entry_per_class_for_instances():
    label_map = np.zeros((8, 8), np.int32)
    label_map[:2, :2], label_map[4:, 4:], label_map[:2, 5:] = 1, 2, 3
    entries = legend_entries(instances(label_map, {1: 0, 2: 0, 3: 2}), PALETTE)
    assert [e[:2] for e in entries] == [(0, "red"), (2, "blue")]


def test_legend_strip_shows_present_colours_only():
    label_map = np.zeros((120, 160), np.int32)
    label_map[:, 80:] = 2
    image = np.full((120, 160, 3), 128, np.uint8)
    out = render(image, semantic(label_map), PALETTE, legend=True, labels=False, contours=False)
    assert out.shape == (120, 160 + legend_width(120, 160), 3)
    strip = {tuple(p) for p in out[:, 160:].reshape(-1, 3)}
    assert tuple(PALETTE[0]) in strip and tuple(PALETTE[2]) in strip
    assert tuple(PALETTE[1]) not in strip and tuple(PALETTE[3]) not in strip
    assert np.array_equal(out[:, :160], plain(image, semantic(label_map)))


def test_legend_overflow_summarised():
    # 40 classes in a 60 px tall image: most cannot fit; the strip keeps its width
    label_map = np.arange(40, dtype=np.int32).repeat(2)[None, :].repeat(60, 0)
    names = {i: f"class {i}" for i in range(40)}
    palette = np.random.default_rng(0).integers(0, 256, (40, 3), dtype=np.uint8)
    out = render(np.zeros((60, 80, 3), np.uint8), semantic(label_map, names), palette, labels=False)
    assert out.shape == (60, 80 + legend_width(60, 80), 3)
    strip = {tuple(p) for p in out[:, 80:].reshape(-1, 3)}
    swatches = sum(tuple(c) in strip for c in palette)
    assert 0 < swatches < 40  # the first rows fit, the rest are "+N more"


def test_semantic_colours_are_class_colours():
    result = semantic([[0, 2], [2, 3]])
    assert segment_colors(result, PALETTE) == {0: (200, 0, 0), 2: (0, 0, 200), 3: (250, 250, 0)}


@pytest.mark.parametrize(
    "base",
    [
        (220, 20, 60),  # COCO person
        (120, 120, 120),  # ADE wall: grey, hue shifts do nothing
        (230, 230, 230),  # near white
        (0, 0, 70),  # near black
        (255, 255, 255),
    ],
)
def test_instance_colours_distinct_yet_near_class(base):
    palette = np.array([base, (0, 255, 0)], np.uint8)
    label_map = np.zeros((10, 40), np.int32)
    for k in range(6):  # six instances of class 0, areas 10*(6-k)... largest first
        label_map[:, k * 6 : k * 6 + 6 - k] = k + 1
    label_map[:, 38:] = 7  # one instance of class 1
    result = instances(label_map, {**{k + 1: 0 for k in range(6)}, 7: 1})
    colors = segment_colors(result, palette)
    mine = [colors[k + 1] for k in range(6)]
    assert mine[0] == base  # the largest instance shows the class colour itself
    assert len(set(mine)) == 6
    assert min(math.dist(a, b) for i, a in enumerate(mine) for b in mine[i + 1 :]) >= 12
    # the first few stay close: each channel within 80 (greys and near-whites can only
    # change lightness, and near-white only downwards, so they drift furthest)
    assert max(abs(a - b) for c in mine[:4] for a, b in zip(base, c, strict=True)) <= 80
    assert colors[7] == (0, 255, 0)


def test_panoptic_stuff_plain_things_varied():
    label_map = np.array([[1, 1, 2, 3], [1, 1, 2, 3]], np.int32)
    result = instances(label_map, {1: 3, 2: 0, 3: 0}, task=Task.PANOPTIC, stuff={1})
    colors = segment_colors(result, PALETTE)
    assert colors[1] == (250, 250, 0)
    assert colors[2] == (200, 0, 0) and colors[3] != colors[2]


def test_instance_colours_deterministic():
    label_map = np.arange(12, dtype=np.int32).reshape(3, 4)
    result = instances(label_map, {k: k % 2 for k in range(1, 12)})
    assert segment_colors(result, PALETTE) == segment_colors(result, PALETTE.copy())


def test_draw_order_stuff_before_things_large_before_small():
    seg = lambda i, area, thing: Segment(i, "x", 0, 0.9, area, (0, 0, 1, 1), thing)  # noqa: E731
    segments = [
        seg(1, 50, True),
        seg(2, 10, False),
        seg(3, 900, True),
        seg(4, 400, False),
        seg(5, 50, True),
    ]
    result = SegmentationResult(Task.PANOPTIC, np.zeros((1, 1), np.int32), segments, {0: "x"})
    assert [s.id for s in draw_order(result)] == [4, 2, 3, 1, 5]


def test_labels_are_drawn_inside_the_image():
    label_map = np.zeros((100, 200), np.int32)
    label_map[:, 100:] = 1
    image = np.zeros((100, 200, 3), np.uint8)
    result = semantic(label_map)
    with_labels = render(image, result, PALETTE, labels=True, legend=False, contours=False)
    without = render(image, result, PALETTE, labels=False, legend=False, contours=False)
    changed = np.any(with_labels != without, axis=2)
    ys, xs = np.nonzero(changed)
    assert changed.any()
    for x, y in label_positions(result).values():
        assert changed[y, x]  # a box covers each label point
    assert xs.max() < 200 and ys.max() < 100


@pytest.mark.parametrize(
    ("task", "legend", "expected_width"),
    [
        (Task.SEMANTIC, False, 1),
        (Task.SEMANTIC, True, 1 + legend_width(1, 1)),
        (Task.INSTANCE, True, 1 + legend_width(1, 1)),
    ],
)
def test_one_pixel_image(task, legend, expected_width):
    image = np.full((1, 1, 3), 7, np.uint8)
    result = semantic([[1]]) if task == Task.SEMANTIC else instances([[1]], {1: 1})
    out = render(image, result, PALETTE, legend=legend)
    assert out.shape == (1, expected_width, 3) and out.dtype == np.uint8


def test_render_does_not_mutate_inputs():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    label_map = rng.integers(0, 4, (30, 40)).astype(np.int32)
    result = semantic(label_map)
    palette = PALETTE.copy()
    copies = image.copy(), label_map.copy(), palette.copy()
    render(image, result, palette)
    colorize(label_map, palette)
    assert all(
        np.array_equal(a, b)
        for a, b in zip((image, result.label_map, palette), copies, strict=True)
    )


def test_ids_beyond_palette_get_generated_colours():
    label_map = np.array([[0, 9]], np.int32)
    result = semantic(label_map, {0: "a", 9: "j"})
    out = plain(np.zeros((1, 2, 3), np.uint8), result, PALETTE[:2], alpha=1.0)
    assert tuple(out[0, 0]) == tuple(PALETTE[0])
    assert tuple(out[0, 1]) not in {tuple(c) for c in PALETTE[:2]}


@pytest.mark.parametrize(
    ("image", "label_map", "alpha"),
    [
        (np.zeros((3, 4, 3), np.uint8), np.zeros((4, 3), np.int32), 0.5),  # transposed
        (np.zeros((3, 4), np.uint8), np.zeros((3, 4), np.int32), 0.5),  # grey image
        (np.zeros((3, 4, 3), np.float32), np.zeros((3, 4), np.int32), 0.5),  # float image
        (np.zeros((3, 4, 3), np.uint8), np.zeros((3, 4), np.int32), 1.5),  # alpha > 1
        (np.zeros((3, 4, 3), np.uint8), np.zeros((3, 4), np.int32), -0.1),
    ],
)
def test_render_bad_input(image, label_map, alpha):
    result = SegmentationResult(
        Task.SEMANTIC, label_map, segments_from_label_map(label_map, NAMES), NAMES
    )
    with pytest.raises(RenderError) as err:
        render(image, result, PALETTE, alpha=alpha)
    assert "\n" not in str(err.value)


def test_empty_segments_not_labelled_nor_listed():
    # post-processors can report a segment that later ones covered entirely (area 0)
    label_map = np.zeros((20, 20), np.int32)
    label_map[5:15, 5:15] = 1
    result = instances(label_map, {1: 0})
    result.segments.append(Segment(2, "blue", 2, 0.8, 0, (0, 0, 0, 0), None))
    assert set(label_positions(result)) == {1}
    assert [e[0] for e in legend_entries(result, PALETTE)] == [0]
    out = render(np.zeros((20, 20, 3), np.uint8), result, PALETTE)
    assert out.shape == (20, 20 + legend_width(20, 20), 3)
