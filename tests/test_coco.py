"""segdemo.coco: COCO panoptic folders, COCO instances JSON and 🤗 datasets as Targets.

The builders here (``write_panoptic``, ``write_instances``) are also used by
tests/test_universal_transforms.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from segdemo.coco import Target, load_universal, validate_universal
from segdemo.convert import segment_ids_to_rgb
from segdemo.data import DatasetError

H, W = 32, 40

# non-contiguous COCO ids, listed out of order: class ids are positions after sorting by id
CATEGORIES = [
    {"id": 42, "name": "person", "isthing": 1},
    {"id": 7, "name": "ground", "isthing": 0},
    {"id": 3, "name": "sky", "isthing": 0},
    {"id": 17, "name": "car", "isthing": 1},
]
ID2LABEL = {0: "sky", 1: "ground", 2: "car", 3: "person"}
THING_ID2LABEL = {0: "car", 1: "person"}


def scene(seed: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """``(HxWx3 uint8 photo, HxW segment ids, segments_info)``: sky over ground, a car box,
    a person disc, a crowd of persons, and a void strip. Ids are large on purpose (G, B used)."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((H, W), np.int64)
    ids[:12] = 300  # sky: R=44, G=1
    ids[12:] = 70_000  # ground: uses B
    top, left = int(rng.integers(14, 20)), int(rng.integers(0, 10))
    ids[top : top + 8, left : left + 12] = 5  # car
    yy, xx = np.mgrid[:H, :W]
    ids[(yy - 8) ** 2 + (xx - 30) ** 2 <= 16] = 6  # person (on the sky)
    ids[26:30, 30:38] = 9  # crowd of persons
    ids[:, 0] = 0  # void column
    colours = {300: (90, 150, 230), 70_000: (110, 90, 60), 5: (220, 30, 30), 6: (30, 200, 30)}
    photo = np.full((H, W, 3), 128, np.uint8)
    for segment_id, colour in colours.items():
        photo[ids == segment_id] = colour
    segments = [
        {"id": 300, "category_id": 3, "iscrowd": 0},
        {"id": 70_000, "category_id": 7, "iscrowd": 0},
        {"id": 5, "category_id": 17, "iscrowd": 0},
        {"id": 6, "category_id": 42, "iscrowd": 0},
        {"id": 9, "category_id": 42, "iscrowd": 1},
    ]
    return photo, ids, segments


def write_panoptic(root: Path, splits=(("train", 3), ("val", 2))) -> Path:
    """A COCO panoptic folder of :func:`scene` images; ``root/{split}/...``."""
    seed = 0
    for split, count in splits:
        split_dir = root / split
        (split_dir / "images").mkdir(parents=True)
        (split_dir / "panoptic").mkdir()
        images, annotations = [], []
        for i in range(count):
            photo, ids, segments = scene(seed := seed + 1)
            name = f"{split}_{i}"
            Image.fromarray(photo).save(split_dir / "images" / f"{name}.png")
            Image.fromarray(segment_ids_to_rgb(ids)).save(split_dir / "panoptic" / f"{name}.png")
            images.append({"id": i + 10, "file_name": f"{name}.png", "width": W, "height": H})
            annotations.append(
                {"image_id": i + 10, "file_name": f"{name}.png", "segments_info": segments}
            )
        doc = {"images": images, "annotations": annotations, "categories": CATEGORIES}
        (split_dir / "panoptic.json").write_text(json.dumps(doc))
    return root


def _box(top, left, bottom, right) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[top:bottom, left:right] = True
    return mask


def instance_annotations() -> tuple[list[dict], list[np.ndarray]]:
    """Annotations of one image in every segmentation encoding, with the masks they decode to."""
    car = _box(4, 4, 12, 16)
    rle = mask_utils.encode(np.asfortranarray(car.astype(np.uint8)))
    compressed = {"size": [H, W], "counts": rle["counts"].decode("ascii")}
    person = _box(10, 20, 30, 30)  # overlaps the next one: instances may overlap
    runs, flat, value, count = [], person.ravel(order="F"), False, 0
    for pixel in flat:  # uncompressed RLE: run lengths in column-major order, starting with 0s
        if pixel != value:
            runs.append(count)
            value, count = pixel, 0
        count += 1
    runs.append(count)
    crowd = _box(20, 25, 28, 38)
    crowd_rle = mask_utils.encode(np.asfortranarray(crowd.astype(np.uint8)))
    anns = [
        # a polygon in two parts (a box split down the middle)
        {"id": 1, "category_id": 17, "iscrowd": 0, "segmentation": [
            [20.0, 2.0, 26.0, 2.0, 26.0, 8.0, 20.0, 8.0],
            [26.0, 2.0, 32.0, 2.0, 32.0, 8.0, 26.0, 8.0],
        ]},
        {"id": 2, "category_id": 17, "iscrowd": 0, "segmentation": compressed},
        {"id": 3, "category_id": 42, "iscrowd": 0, "segmentation": {"size": [H, W], "counts": runs}},
        {"id": 4, "category_id": 42, "iscrowd": 1, "segmentation": {
            "size": [H, W], "counts": crowd_rle["counts"].decode("ascii")}},
    ]  # fmt: skip
    return anns, [_box(2, 20, 8, 32), car, person, crowd]


def write_instances(root: Path, splits=(("train", 2), ("val", 1)), images_dir=True) -> Path:
    """A COCO instances folder: every image carries :func:`instance_annotations`."""
    anns, _ = instance_annotations()
    for split, count in splits:
        split_dir = root / split
        folder = split_dir / "images" if images_dir else split_dir
        folder.mkdir(parents=True)
        images, annotations = [], []
        for i in range(count):
            photo, _, _ = scene(i)
            Image.fromarray(photo).save(folder / f"{split}_{i}.jpg")
            images.append({"id": i, "file_name": f"{split}_{i}.jpg", "width": W, "height": H})
            for ann in anns:
                annotations.append({**ann, "id": 100 * i + ann["id"], "image_id": i})
        categories = [{k: v for k, v in c.items() if k != "isthing"} for c in CATEGORIES]
        doc = {"images": images, "annotations": annotations, "categories": categories}
        (split_dir / "instances.json").write_text(json.dumps(doc))
    return root


# --------------------------------------------------------------------------- panoptic


def test_panoptic_folder_reads_png_ids_categories_and_crowd(tmp_path):
    root = write_panoptic(tmp_path / "pan")
    splits = load_universal("panoptic", data_dir=root)
    assert splits.id2label == ID2LABEL
    assert splits.thing_ids == {2, 3}
    assert not splits.val_carved and len(splits.train) == 3 and len(splits.val) == 2
    assert splits.train.keys() == ["train_0", "train_1", "train_2"]
    image, target = splits.train[0]
    _, ids, _ = scene(1)
    assert image.mode == "RGB" and image.size == (W, H)
    assert target.masks.shape == (5, H, W) and target.masks.dtype == bool
    assert target.segment_ids.tolist() == [300, 70_000, 5, 6, 9]
    assert target.class_ids.tolist() == [0, 1, 2, 3, 3]
    assert target.iscrowd.tolist() == [False, False, False, False, True]
    for mask, segment_id in zip(target.masks, target.segment_ids, strict=True):
        assert (mask == (ids == segment_id)).all()
    segment_map, info = target.panoptic_map()
    assert segment_map.dtype == np.int32 and (segment_map == ids).all()
    assert info == {300: (0, False), 70_000: (1, False), 5: (2, False), 6: (3, False), 9: (3, True)}
    counts = validate_universal(splits, "panoptic")
    assert counts["train"].tolist() == [3, 3, 3, 3]  # crowd not counted


def test_instance_task_on_a_panoptic_folder_keeps_things_only(tmp_path):
    splits = load_universal("instance", data_dir=write_panoptic(tmp_path / "pan"))
    assert splits.id2label == THING_ID2LABEL and splits.thing_ids == {0, 1}
    _, target = splits.val[0]
    assert target.class_ids.tolist() == [0, 1, 1] and target.iscrowd.tolist() == [0, 0, 1]
    segment_map, _ = target.panoptic_map()
    _, ids, _ = scene(4)
    assert (segment_map[np.isin(ids, [300, 70_000])] == 0).all()  # stuff is void here
    validate_universal(splits, "instance")


def test_a_segment_listed_but_not_painted_keeps_an_empty_mask(tmp_path):
    root = write_panoptic(tmp_path / "pan", splits=(("train", 1), ("val", 1)))
    doc = json.loads((root / "train" / "panoptic.json").read_text())
    doc["annotations"][0]["segments_info"].append({"id": 77, "category_id": 17, "iscrowd": 0})
    (root / "train" / "panoptic.json").write_text(json.dumps(doc))
    _, target = load_universal("panoptic", data_dir=root).train[0]
    assert target.segment_ids[-1] == 77 and not target.masks[-1].any()  # PQ: a false negative


def test_missing_val_is_carved_with_a_seed(tmp_path):
    root = write_panoptic(tmp_path / "pan", splits=(("train", 5),))
    a = load_universal("panoptic", data_dir=root, val_fraction=0.4, seed=1)
    b = load_universal("panoptic", data_dir=root, val_fraction=0.4, seed=1)
    assert a.val_carved and len(a.val) == 2 and len(a.train) == 3
    assert a.val.keys() == b.val.keys() and not set(a.val.keys()) & set(a.train.keys())
    _, target = a.val[0]
    assert target.masks.shape[1:] == (H, W)


def test_panoptic_map_renumbers_ids_it_cannot_use():
    masks = np.zeros((2, 2, 2), bool)
    masks[0, 0], masks[1, 1] = True, True
    # COCO crowd annotation ids exceed int32
    target = Target.build(masks, [4, 5], [True, False], [900100000000, 0], (2, 2))
    segment_map, info = target.panoptic_map()
    assert segment_map.tolist() == [[1, 1], [2, 2]]
    assert info == {1: (4, True), 2: (5, False)}
    empty = Target.build([], [], [], [], (3, 4))
    assert empty.masks.shape == (0, 3, 4) and empty.panoptic_map()[1] == {}


# --------------------------------------------------------------------------- instances JSON


@pytest.mark.parametrize("images_dir", [True, False])  # images/ or next to instances.json
def test_instances_json_decodes_polygons_rle_and_crowd(tmp_path, images_dir):
    root = write_instances(tmp_path / "inst", images_dir=images_dir)
    splits = load_universal("instance", data_dir=root)
    assert splits.id2label == ID2LABEL  # every category is a class, and a thing
    assert splits.thing_ids == {0, 1, 2, 3}
    _, expected = instance_annotations()
    image, target = splits.train[1]
    assert image.size == (W, H)
    assert target.segment_ids.tolist() == [101, 102, 103, 104]
    assert target.class_ids.tolist() == [2, 2, 3, 3]
    assert target.iscrowd.tolist() == [False, False, False, True]
    # RLE (compressed and not) is exact; the polygon is rasterised by pycocotools
    for mask, wanted in zip(target.masks[1:], expected[1:], strict=True):
        assert (mask == wanted).all()
    polygon, box = target.masks[0], expected[0]
    assert (polygon & box).sum() / (polygon | box).sum() > 0.75
    assert not (polygon & ~_box(1, 19, 9, 33)).any()
    assert (target.masks[2] & target.masks[3]).any()  # overlap is kept
    counts = validate_universal(splits, "instance")
    assert counts["train"].tolist() == [0, 0, 4, 2]


def test_instances_json_takes_precedence_over_panoptic(tmp_path):
    root = write_instances(tmp_path / "both")
    for split in ("train", "val"):
        (root / split / "panoptic.json").write_text("{}")  # would fail if it were read
    assert load_universal("instance", data_dir=root).id2label == ID2LABEL
    with pytest.raises(DatasetError, match="panoptic.json: needs the lists"):
        load_universal("panoptic", data_dir=root)


# --------------------------------------------------------------------------- 🤗 datasets


def _hf_rows(n: int) -> dict:
    images, annotations = [], []
    for i in range(n):
        photo, ids, _ = scene(i)
        annotation = np.zeros((H, W, 3), np.uint8)
        annotation[..., 0] = 1  # class 1 everywhere, instance 0 = no instance
        annotation[ids == 5] = (2, 1, 0)  # car: class 2, instance 1
        annotation[ids == 6] = (3, 1, 0)  # person: class 3, instance 1 (same G, other class)
        annotation[ids == 9] = (3, 2, 0)  # another person
        images.append(Image.fromarray(photo))
        annotations.append(Image.fromarray(annotation))
    return {"image": images, "annotation": annotations}


def test_hf_dataset_folder_with_id2label_json(tmp_path):
    datasets = pytest.importorskip("datasets")
    table = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(_hf_rows(3)),
            "validation": datasets.Dataset.from_dict(_hf_rows(1)),
        }
    )
    table.save_to_disk(tmp_path / "hf")
    (tmp_path / "hf" / "id2label.json").write_text(
        json.dumps({str(k): v for k, v in ID2LABEL.items()})
    )
    splits = load_universal("instance", dataset=str(tmp_path / "hf"))
    assert splits.id2label == ID2LABEL and splits.thing_ids == {0, 1, 2, 3}
    assert len(splits.train) == 3 and len(splits.val) == 1 and not splits.val_carved
    _, ids, _ = scene(0)
    image, target = splits.val[0]
    assert image.size == (W, H)
    assert target.class_ids.tolist() == [2, 3, 3]  # by R + 256*G: (2,1), (3,1), (3,2)
    assert target.segment_ids.tolist() == [2 + 256, 3 + 256, 3 + 512]
    for mask, segment_id in zip(target.masks, [5, 6, 9], strict=True):
        assert (mask == (ids == segment_id)).all()
    assert not target.iscrowd.any()
    validate_universal(splits, "instance")


def test_hf_dataset_with_semantic_class_to_id_and_no_val(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = _hf_rows(4)
    rows["semantic_class_to_id"] = [{name: k for k, name in ID2LABEL.items()}] * 4
    datasets.Dataset.from_dict(rows).save_to_disk(tmp_path / "hf")
    splits = load_universal("instance", dataset=str(tmp_path / "hf"), val_fraction=0.25)
    assert splits.id2label == ID2LABEL and splits.val_carved and len(splits.val) == 1


def test_hf_dataset_class_out_of_range_is_named(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = _hf_rows(2)
    rows["semantic_class_to_id"] = [{"a": 0, "b": 1}] * 2  # classes 2 and 3 do not exist
    datasets.Dataset.from_dict(rows).save_to_disk(tmp_path / "hf")
    splits = load_universal("instance", dataset=str(tmp_path / "hf"))
    with pytest.raises(DatasetError, match=r"hf\[train\]\[\d\]\.annotation: class id 2 \(R\)"):
        validate_universal(splits, "instance")


def test_hf_dataset_cannot_train_panoptic(tmp_path):
    with pytest.raises(DatasetError, match="panoptic training needs a COCO panoptic folder"):
        load_universal("panoptic", dataset=str(tmp_path))


# --------------------------------------------------------------------------- bad input


def _edit_json(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _paint_png(path: Path, segment_id: int) -> None:
    ids = np.asarray(Image.open(path)).astype(np.int64)
    ids = ids[..., 0] + 256 * ids[..., 1] + 65536 * ids[..., 2]
    ids[5, 5] = segment_id
    Image.fromarray(segment_ids_to_rgb(ids)).save(path)


def _resize(path: Path, size=(W + 2, H)) -> None:
    Image.open(path).convert("RGB").resize(size).save(path)


PAN = "train/panoptic.json"
INST = "train/instances.json"

BAD_PANOPTIC = [
    # (what is wrong, edit of the folder, file the message names, text in the message)
    (
        "PNG id missing from segments_info",
        lambda r: _paint_png(r / "train/panoptic/train_1.png", 1234),
        "train/panoptic/train_1.png",
        "segment id 1234 is in the PNG but not in the segments_info",
    ),
    (
        "unknown category_id",
        lambda r: _edit_json(
            r / PAN, lambda d: d["annotations"][1]["segments_info"][2].update(category_id=99)
        ),
        PAN,
        "unknown category_id 99",
    ),
    (
        "image without annotation",
        lambda r: _edit_json(r / PAN, lambda d: d["annotations"].pop(2)),
        "train/images/train_2.png",
        "image has no annotation",
    ),
    (
        "image file not listed in the JSON",
        lambda r: Image.new("RGB", (W, H)).save(r / "train/images/extra.png"),
        "train/images/extra.png",
        "is not listed in",
    ),
    (
        "annotation without image",
        lambda r: _edit_json(r / PAN, lambda d: d["images"].pop(0)),
        PAN,
        "has image_id 10, which is not in images",
    ),
    (
        "missing image file",
        lambda r: (r / "train/images/train_0.png").unlink(),
        "train/images/train_0.png",
        "image not found",
    ),
    (
        "missing PNG",
        lambda r: (r / "train/panoptic/train_0.png").unlink(),
        "train/panoptic/train_0.png",
        "panoptic PNG not found",
    ),
    (
        "unreadable image",
        lambda r: (r / "train/images/train_1.png").write_bytes(b"\x89PNG broken"),
        "train/images/train_1.png",
        "",
    ),
    (
        "unreadable PNG",
        lambda r: (r / "train/panoptic/train_2.png").write_bytes(b"\x89PNG broken"),
        "train/panoptic/train_2.png",
        "cannot read the panoptic PNG",
    ),
    (
        "PNG and image sizes differ",
        lambda r: _resize(r / "train/panoptic/train_1.png"),
        "train/panoptic/train_1.png",
        f"PNG is {W + 2}x{H} but its image is {W}x{H}",
    ),
    (
        "segment id 0",
        lambda r: _edit_json(
            r / PAN, lambda d: d["annotations"][0]["segments_info"][0].update(id=0)
        ),
        PAN,
        "ids must be unique integers > 0",
    ),
    (
        "category without isthing",
        lambda r: _edit_json(r / PAN, lambda d: d["categories"][0].pop("isthing")),
        PAN,
        "needs isthing",
    ),
    (
        "val categories differ",
        lambda r: _edit_json(r / "val/panoptic.json", lambda d: d["categories"].pop()),
        "val/panoptic.json",
        "categories differ from the train split",
    ),
]

BAD_INSTANCES = [
    (
        "polygon outside the image",
        lambda r: _edit_json(
            r / INST,
            lambda d: d["annotations"][0].update(segmentation=[[1, 1, 60, 1, 60, 9, 1, 9]]),
        ),
        INST,
        "annotation 1 (train_0): polygon point [60.0, 1.0] is outside the 40x32 image",
    ),
    (
        "unknown category_id",
        lambda r: _edit_json(r / INST, lambda d: d["annotations"][5].update(category_id=5)),
        INST,
        "annotation 102 has unknown category_id 5",
    ),
    (
        "annotation without image",
        lambda r: _edit_json(r / INST, lambda d: d["annotations"][0].update(image_id=77)),
        INST,
        "annotation 1 has image_id 77, which is not in images",
    ),
    (
        "image without annotation (on disk, not in the JSON)",
        lambda r: Image.new("RGB", (W, H)).save(r / "train/images/stray.jpg"),
        "train/images/stray.jpg",
        "is not listed in",
    ),
    (
        "missing image file",
        lambda r: (r / "train/images/train_1.jpg").unlink(),
        "train/images/train_1.jpg",
        "image not found",
    ),
    (
        "polygon with two points",
        lambda r: _edit_json(
            r / INST, lambda d: d["annotations"][0].update(segmentation=[[1, 1, 5, 5]])
        ),
        INST,
        "a polygon needs at least 3 points",
    ),
    (
        "RLE of another size",
        lambda r: _edit_json(
            r / INST, lambda d: d["annotations"][1]["segmentation"].update(size=[H, W + 1])
        ),
        INST,
        f"RLE needs counts and size [height, width] = [{H}, {W}]",
    ),
    (
        "no segmentation",
        lambda r: _edit_json(r / INST, lambda d: d["annotations"][2].pop("segmentation")),
        INST,
        "has no segmentation",
    ),
    (
        "image size differs from the JSON",
        lambda r: _resize(r / "train/images/train_0.jpg"),
        "train/images/train_0.jpg",
        f"image is {W + 2}x{H} but",
    ),
    (
        "unreadable image",
        lambda r: (r / "train/images/train_1.jpg").write_bytes(b"\xff\xd8 broken"),
        "train/images/train_1.jpg",
        "",
    ),
]


@pytest.mark.parametrize(
    "layout, break_it, file, text",
    [("panoptic", *case[1:]) for case in BAD_PANOPTIC]
    + [("instance", *case[1:]) for case in BAD_INSTANCES],
    ids=[f"panoptic: {c[0]}" for c in BAD_PANOPTIC] + [f"instances: {c[0]}" for c in BAD_INSTANCES],
)
def test_bad_input_is_one_line_naming_the_file(tmp_path, layout, break_it, file, text):
    root = (write_panoptic if layout == "panoptic" else write_instances)(tmp_path / "d")
    break_it(root)
    with pytest.raises(DatasetError) as err:  # at load or, for pixel problems, in validation
        validate_universal(load_universal(layout, data_dir=root), layout)
    message = str(err.value)
    assert "\n" not in message
    assert str(root / file) in message
    assert text in message


def test_evaluation_alone_checks_the_val_split_only(tmp_path):
    root = write_panoptic(tmp_path / "d")
    (root / "train/images/train_1.png").write_bytes(b"\x89PNG broken")
    splits = load_universal("panoptic", data_dir=root)
    with pytest.raises(DatasetError, match="train_1.png"):
        validate_universal(splits, "panoptic")
    assert set(validate_universal(splits, "panoptic", check=("val",))) == {"val"}


def test_val_groups_hold_out_whole_groups_of_a_panoptic_folder(tmp_path):
    """train/run.py --task panoptic --val-groups: train + val pooled, split by group."""
    from train.options import parse_args
    from train.universal import UniversalRecipe

    root = write_panoptic(tmp_path / "d")  # train_0..2, val_0..1
    argv = ["--task", "panoptic", "--data-dir", str(root), "--group-pattern", r"^[a-z]+_(\d)"]
    held = UniversalRecipe(parse_args([*argv, "--val-groups", "0,1"])).splits
    assert sorted(held.val.keys()) == ["train_0", "train_1", "val_0", "val_1"]
    assert held.train.keys() == ["train_2"] and held.val_carved
    index = held.val.keys().index("val_1")
    assert held.val.name(index).endswith("val/images/val_1.png")
    original = load_universal("panoptic", data_dir=root).val[1][1]
    np.testing.assert_array_equal(held.val[index][1].masks, original.masks)  # that sample's
    pooled = UniversalRecipe(parse_args([*argv, "--train-on-val"])).splits
    assert len(pooled.train) == 5 and pooled.val.keys() == ["val_0", "val_1"]
    with pytest.raises(DatasetError, match=r"--val-groups 7: .*0, 1, 2"):
        UniversalRecipe(parse_args([*argv, "--val-groups", "7"]))


def test_instance_training_needs_some_thing(tmp_path):
    root = write_panoptic(tmp_path / "pan")
    for split in ("train", "val"):
        _edit_json(
            root / split / "panoptic.json", lambda d: [c.update(isthing=0) for c in d["categories"]]
        )
    splits = load_universal("instance", data_dir=root, things_only=False)
    with pytest.raises(DatasetError, match="no \\(non-crowd\\) thing instance"):
        validate_universal(splits, "instance")


@pytest.mark.parametrize(
    "kwargs, text",
    [
        ({"task": "semantic", "data_dir": "x"}, "task must be one of instance, panoptic"),
        ({"task": "panoptic"}, "pass exactly one of --data-dir and --dataset"),
        ({"task": "panoptic", "data_dir": "/nonexistent"}, "/nonexistent/train: not found"),
    ],
)
def test_bad_arguments(kwargs, text):
    with pytest.raises(DatasetError, match=text):
        load_universal(kwargs.pop("task"), **kwargs)
