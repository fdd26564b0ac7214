"""Palettes: exact upstream colours (RGB, reduced ADE ids), name matching, determinism."""

import fnmatch
import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from segdemo.palettes import (
    PALETTES,
    UnknownPaletteError,
    distinct_colors,
    generated_palette,
    normalize_name,
    palette_for,
)

ROOT = Path(__file__).resolve().parents[1]


def _min_distance(colors: np.ndarray) -> float:
    c = colors.astype(np.float64)
    d = np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return float(d.min())


@pytest.mark.parametrize(
    ("name", "size"),
    [("ade20k", 150), ("cityscapes", 19), ("coco_panoptic", 133), ("camvid", 11)],
)
def test_named_palette_sizes(name, size):
    palette = PALETTES[name]
    assert palette.colors.shape == (size, 3)
    assert palette.colors.dtype == np.uint8
    assert len(palette.names) == size


@pytest.mark.parametrize(
    ("name", "class_id", "class_name", "rgb"),
    [
        # reduced ADE id 0 is wall: the guide's 151-row table would give it background's colour
        ("ade20k", 0, "wall", (120, 120, 120)),
        # sky is cyan (6, 230, 230) in RGB; a BGR swap would make it (230, 230, 6), yellow
        ("ade20k", 2, "sky", (6, 230, 230)),
        ("ade20k", 12, "person", (150, 5, 61)),
        ("ade20k", 149, "flag", (92, 0, 255)),
        ("cityscapes", 0, "road", (128, 64, 128)),
        # Cityscapes car is dark blue (0, 0, 142); swapped it would be dark red
        ("cityscapes", 13, "car", (0, 0, 142)),
        ("coco_panoptic", 0, "person", (220, 20, 60)),
        ("coco_panoptic", 80, "banner", None),  # first stuff class: position checked, not colour
        ("coco_panoptic", 132, "rug-merged", (250, 141, 255)),
        ("camvid", 0, "sky", (128, 128, 128)),
        ("camvid", 4, "pavement", (60, 40, 222)),
        ("camvid", 10, "bicyclist", (0, 128, 192)),
    ],
)
def test_named_palette_entries(name, class_id, class_name, rgb):
    palette = PALETTES[name]
    assert palette.names[class_id] == class_name
    if rgb is not None:
        assert tuple(int(c) for c in palette.colors[class_id]) == rgb


def test_coco_panoptic_things_then_stuff():
    # Mask2Former's COCO-panoptic id2label: 80 things (0..79), then 53 stuff (80..132)
    assert PALETTES["coco_panoptic"].is_thing == (True,) * 80 + (False,) * 53


def test_generated_has_no_fixed_table():
    assert PALETTES["generated"].colors.shape == (0, 3)


def test_shared_tables_are_read_only():
    with pytest.raises(ValueError):
        PALETTES["ade20k"].colors[0] = 0


@pytest.mark.parametrize(
    ("n", "min_distance"),
    [
        (2, 200.0),  # hues half a turn apart
        (10, 60.0),  # measured 66.9
        (20, 40.0),  # measured 49.4
    ],
)
def test_generated_palette_well_separated(n, min_distance):
    colors = generated_palette(n)
    assert colors.shape == (n, 3) and colors.dtype == np.uint8
    assert _min_distance(colors) >= min_distance


def test_generated_palette_distinct_and_prefix_stable():
    colors = generated_palette(256)
    assert len({tuple(c) for c in colors}) == 256
    # adding classes never recolours the existing ones
    assert np.array_equal(generated_palette(40), colors[:40])
    assert generated_palette(0).shape == (0, 3)
    with pytest.raises(ValueError):
        generated_palette(-1)


ADE = dict(enumerate(PALETTES["ade20k"].names))


@pytest.mark.parametrize(
    ("id2label", "expected"),
    [
        # canonical order: the palette itself
        ({0: "wall", 1: "building", 2: "sky"}, [(120, 120, 120), (180, 120, 120), (6, 230, 230)]),
        # another order, other case, stray spaces: matched by name
        ({0: "Sky", 1: " WALL", 2: "bed"}, [(6, 230, 230), (120, 120, 120), (204, 5, 255)]),
        # synonym lists as some configs write them
        ({0: "windowpane, window"}, [(230, 230, 230)]),
        # transformers' default names carry no meaning: index order
        ({0: "LABEL_0", 1: "LABEL_1"}, [(120, 120, 120), (180, 120, 120)]),
        # the guide's 151-entry id2label with background first: wall keeps wall's colour
        ({0: "background", 1: "wall", 2: "building"}, [None, (120, 120, 120), (180, 120, 120)]),
        # JSON configs have string keys
        ({"0": "sky"}, [(6, 230, 230)]),
    ],
)
def test_palette_for_ade_matches_names(id2label, expected):
    colors = palette_for("ade20k", id2label)
    assert colors.shape == (len(expected), 3)
    for row, rgb in zip(colors, expected, strict=True):
        if rgb is not None:
            assert tuple(int(c) for c in row) == rgb


def test_palette_for_full_canonical_is_the_palette():
    assert np.array_equal(palette_for("ade20k", ADE), PALETTES["ade20k"].colors)
    cityscapes = dict(enumerate(PALETTES["cityscapes"].names))
    assert np.array_equal(palette_for("cityscapes", cityscapes), PALETTES["cityscapes"].colors)


def test_palette_for_underscores_and_hyphens():
    colors = palette_for("cityscapes", {0: "traffic_light", 1: "Traffic-Sign"})
    assert [tuple(int(c) for c in row) for row in colors] == [(250, 170, 30), (220, 220, 0)]


def test_unmatched_classes_get_colours_far_from_named_ones():
    id2label = {0: "road", 1: "unicorn", 2: "car", 3: "dragon", 5: "sidewalk"}  # 4 missing
    colors = palette_for("cityscapes", id2label).astype(np.float64)
    assert colors.shape == (6, 3)
    named = colors[[0, 2, 5]]
    generated = colors[[1, 3, 4]]
    gaps = np.sqrt(((generated[:, None] - named[None]) ** 2).sum(-1))
    assert gaps.min() >= 60  # measured 220: farthest-point choice
    assert _min_distance(generated) >= 60  # measured 219


def test_unmatched_against_full_ade_are_distinct():
    # 150 named colours crowd the RGB cube; the 5 extra classes still get new colours
    id2label = ADE | {150 + i: f"extra {i}" for i in range(5)}
    colors = palette_for("ade20k", id2label)
    named = {tuple(c) for c in colors[:150]}
    extra = [tuple(c) for c in colors[150:]]
    assert len(set(extra)) == 5 and not set(extra) & named


@pytest.mark.parametrize(
    ("name", "id2label", "shape"),
    [
        ("generated", {0: "a", 3: "d"}, (4, 3)),
        ("generated", {}, (0, 3)),
        ("ade20k", {}, (150, 3)),
        ("camvid", {20: "sky"}, (21, 3)),
    ],
)
def test_palette_for_shapes(name, id2label, shape):
    assert palette_for(name, id2label).shape == shape


def test_palette_for_generated_is_generated_palette():
    assert np.array_equal(palette_for("generated", {0: "a", 1: "b", 2: "c"}), generated_palette(3))


def test_palette_for_returns_a_private_copy():
    colors = palette_for("ade20k", {})
    colors[0] = (1, 2, 3)
    assert tuple(int(c) for c in PALETTES["ade20k"].colors[0]) == (120, 120, 120)


@pytest.mark.parametrize(
    ("name", "id2label", "error"),
    [
        ("pascal", {}, UnknownPaletteError),  # not a palette
        (None, {}, UnknownPaletteError),
        ("ade20k", {-1: "wall"}, ValueError),  # class ids start at 0
    ],
)
def test_palette_for_bad_input(name, id2label, error):
    with pytest.raises(error):
        palette_for(name, id2label)
    assert issubclass(UnknownPaletteError, ValueError)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("Traffic_Light ", "trafficlight"),
        ("bed ", "bed"),
        ("door-stuff", "doorstuff"),
        ("Straße", "strasse"),
    ],
)
def test_normalize_name(raw, key):
    assert normalize_name(raw) == key


def test_distinct_colors_without_avoid_is_generated():
    assert np.array_equal(distinct_colors(7), generated_palette(7))


_FINGERPRINT = """
import hashlib, numpy as np
from segdemo.palettes import generated_palette, palette_for
parts = [generated_palette(300), palette_for("coco_panoptic", {0: "person", 1: "zebra-stripe", 4: "Car"}),
         palette_for("ade20k", {i: f"thing {i}" for i in range(40)})]
print(hashlib.sha256(b"".join(np.ascontiguousarray(p).tobytes() for p in parts)).hexdigest())
"""


def test_palettes_identical_across_processes():
    # string hashes are salted per process: different seeds must not change any colour
    digests = set()
    for seed in ("1", "2"):
        env = os.environ | {"PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        run = subprocess.run(
            [sys.executable, "-c", _FINGERPRINT],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        digests.add(run.stdout.strip())
    local = {}
    exec(_FINGERPRINT.replace("print(", "local['digest'] = ("), {"local": local})
    assert digests == {local["digest"]}


def test_assets_ship_as_package_data():
    # a wheel only carries what [tool.setuptools.package-data] names
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["segdemo"]
    assets = resources.files("segdemo").joinpath("assets")
    files = [f"assets/{p.name}" for p in assets.iterdir() if p.name.endswith(".json")]
    assert {"assets/ade20k.json", "assets/coco_panoptic.json"} <= set(files)
    for file in files:
        assert any(fnmatch.fnmatch(file, p) for p in patterns), file
        assert json.loads(assets.joinpath(Path(file).name).read_text())["names"]
