"""segdemo.convert: semantic label maps and folders to COCO panoptic."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest
from PIL import Image

from segdemo.coco import load_universal, read_segment_ids, validate_universal
from segdemo.convert import (
    add_convert_command,
    convert_folder,
    run,
    segment_ids_to_rgb,
    semantic_to_panoptic,
)
from segdemo.data import DatasetError
from tests.synthetic import ID2LABEL, write_folder

STUFF, THING, VOID = 0, 1, 9


def _segments_of(segment_map, segments, class_id):
    return [s for s in segments if s["category_id"] == class_id]


@pytest.mark.parametrize(
    "rows, expected_things",
    [
        # two blocks touching only at a corner: one instance with 8-connectivity
        (["11..", "11..", "..11", "..11"], 1),
        # a one-pixel gap: two instances
        (["11.11", "11.11"], 2),
        # an anti-diagonal chain of single pixels is still one instance
        (["...1", "..1.", ".1..", "1..."], 1),
    ],
)
def test_thing_components_are_8_connected(rows, expected_things):
    labels = np.array([[THING if c == "1" else STUFF for c in row] for row in rows])
    segment_map, segments = semantic_to_panoptic(labels, [THING], ignore_index=None, min_area=1)
    things = _segments_of(segment_map, segments, THING)
    assert len(things) == expected_things
    # every thing pixel is in exactly one thing segment, and the areas add up
    assert sum(s["area"] for s in things) == (labels == THING).sum()
    for s in things:
        assert (labels[segment_map == s["id"]] == THING).all()


def test_stuff_is_one_segment_per_class_and_ids_are_ordered():
    labels = np.zeros((6, 8), np.int64)
    labels[:, 4:] = 3  # stuff class 3 ...
    labels[:, :1] = 3  # ... also in a second, disconnected region
    labels[2:4, 2:4] = THING
    segment_map, segments = semantic_to_panoptic(labels, [THING], ignore_index=None, min_area=1)
    assert [s["id"] for s in segments] == [1, 2, 3]
    assert [s["category_id"] for s in segments] == [0, 3, THING]  # stuff by class id, then things
    stuff3 = segments[1]
    assert stuff3["area"] == (labels == 3).sum()
    assert stuff3["bbox"] == [0, 0, 8, 6]  # [x, y, w, h] around both regions
    assert segments[2]["bbox"] == [2, 2, 2, 2]
    assert all(s["iscrowd"] == 0 for s in segments)
    assert segment_map.dtype == np.int32
    for s in segments:
        assert (segment_map == s["id"]).sum() == s["area"]


def test_small_components_and_ignored_pixels_become_void():
    labels = np.zeros((10, 10), np.int64)
    labels[0:3, 0:3] = THING  # 9 px: kept with min_area 9
    labels[6:8, 6:8] = THING  # 4 px: void
    labels[9, :] = VOID
    segment_map, segments = semantic_to_panoptic(labels, [THING], ignore_index=VOID, min_area=9)
    assert len(_segments_of(segment_map, segments, THING)) == 1
    assert (segment_map[6:8, 6:8] == 0).all()
    assert (segment_map[9] == 0).all()
    assert VOID not in {s["category_id"] for s in segments}
    assert (segment_map[:9] != 0).sum() == 100 - 10 - 4  # everything else has a segment


def test_tiny_stuff_is_kept():
    labels = np.zeros((4, 4), np.int64)
    labels[0, 0] = 5  # one pixel of stuff: min_area applies to things only
    _, segments = semantic_to_panoptic(labels, [THING], ignore_index=None, min_area=64)
    assert {s["category_id"] for s in segments} == {0, 5}


@pytest.mark.parametrize("segment_id", [1, 255, 256, 70000, 256**3 - 1])
def test_png_encoding_round_trips(tmp_path, segment_id):
    ids = np.array([[0, segment_id]], np.int32)
    Image.fromarray(segment_ids_to_rgb(ids)).save(tmp_path / "p.png")
    assert read_segment_ids(tmp_path / "p.png").tolist() == [[0, segment_id]]


# --------------------------------------------------------------------------- folders


@pytest.fixture(scope="module")
def semantic(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("semantic") / "shapes", n_train=6, n_val=3)


def test_convert_folder_writes_a_readable_panoptic_dataset(semantic, tmp_path):
    out = tmp_path / "pan"
    summary = convert_folder(semantic, out, ["box", "disc"], min_area=4)
    assert summary.images == {"train": 6, "val": 3}
    assert set(summary.instances["train"]) == {"box", "disc"}
    assert not (tmp_path / "pan.tmp").exists()
    doc = json.loads((out / "train" / "panoptic.json").read_text())
    assert [(c["id"], c["name"], c["isthing"]) for c in doc["categories"]] == [
        (0, "background", 0),
        (1, "box", 1),
        (2, "disc", 1),
    ]
    image = doc["images"][0]
    source = semantic / "train" / "images" / image["file_name"]
    assert os.path.samefile(out / "train" / "images" / image["file_name"], source)  # linked

    splits = load_universal("panoptic", data_dir=out)
    assert splits.id2label == ID2LABEL and splits.thing_ids == {1, 2}
    counts = validate_universal(splits, "panoptic")
    assert counts["train"][1:].sum() == sum(summary.instances["train"].values())
    assert counts["train"].sum() == summary.segments["train"]
    # the void rings (raw 255) of the synthetic set are void in the PNG
    raw = np.asarray(Image.open(semantic / "train" / "annotations" / "train_000.png"))
    ids = read_segment_ids(out / "train" / "panoptic" / "train_000.png")
    assert (ids[raw == 255] == 0).all()
    _, target = splits.train[0]
    semantic_again = np.full(raw.shape, 255)
    for mask, class_id in zip(target.masks, target.class_ids, strict=True):
        semantic_again[mask] = class_id
    kept = semantic_again != 255
    assert (semantic_again[kept] == raw[kept]).all()


def test_ignore_index_is_void_and_not_a_category(tmp_path):
    root = write_folder(tmp_path / "sem", n_train=3, n_val=0, void=2)  # raw 2 = void here
    summary = convert_folder(root, tmp_path / "out", ["box"], ignore_index=2, min_area=1)
    doc = json.loads((tmp_path / "out" / "train" / "panoptic.json").read_text())
    assert [c["id"] for c in doc["categories"]] == [0, 1]
    assert all(s["category_id"] != 2 for a in doc["annotations"] for s in a["segments_info"])
    assert summary.images == {"train": 3}  # no val split in, none out (the reader carves)


@pytest.mark.parametrize(
    "things, message",
    [
        (["car"], "unknown thing class car; the classes are: background, box, disc"),
        ([], "(none given)"),
    ],
)
def test_unknown_things_are_refused_with_the_class_list(semantic, tmp_path, things, message):
    with pytest.raises(DatasetError, match=r"id2label\.json: unknown thing class") as err:
        convert_folder(semantic, tmp_path / "out", things)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_existing_output_is_never_overwritten(semantic, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(DatasetError, match="already exists"):
        convert_folder(semantic, tmp_path / "out", ["box"])


def test_a_failed_conversion_leaves_no_output_and_the_rerun_cleans_up(tmp_path):
    root = write_folder(tmp_path / "sem", n_train=4, n_val=0)
    broken = root / "train" / "annotations" / "train_002.png"
    good = broken.read_bytes()
    broken.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="train_002.png: cannot read the annotation"):
        convert_folder(root, tmp_path / "out", ["box"])
    assert not (tmp_path / "out").exists()  # a half conversion never looks finished
    assert (tmp_path / "out.tmp").exists()
    broken.write_bytes(good)
    convert_folder(root, tmp_path / "out", ["box"])
    assert (tmp_path / "out" / "train" / "panoptic.json").is_file()
    assert not (tmp_path / "out.tmp").exists()


def test_a_foreign_tmp_folder_is_not_deleted(semantic, tmp_path):
    (tmp_path / "out.tmp").mkdir()
    (tmp_path / "out.tmp" / "precious.txt").write_text("mine")
    with pytest.raises(DatasetError, match="out.tmp: exists and is not a conversion"):
        convert_folder(semantic, tmp_path / "out", ["box"])
    assert (tmp_path / "out.tmp" / "precious.txt").exists()


def _parser():
    parser = argparse.ArgumentParser(prog="segdemo")
    add_convert_command(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_converts_and_prints_one_line(semantic, tmp_path, capsys):
    args = _parser().parse_args(
        ["convert", "semantic-to-panoptic", "--data-dir", str(semantic), "--things", "box, disc"]
        + ["--min-area", "4", "--out", str(tmp_path / "out")]
    )
    assert args.run(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "train: 6 images" in out[0] and "box" in out[0]
    assert (tmp_path / "out" / "val" / "panoptic.json").is_file()


def test_cli_error_is_one_line(semantic, tmp_path, capsys):
    args = _parser().parse_args(
        ["convert", "semantic-to-panoptic", "--data-dir", str(semantic), "--things", "car"]
        + ["--out", str(tmp_path / "out")]
    )
    assert run(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "background, box, disc" in err
