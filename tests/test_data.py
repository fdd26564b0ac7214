"""Dataset readers, validation errors and augmentation (segdemo.data, segdemo.transforms)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic import ID2LABEL, write_folder

from segdemo import data, transforms
from segdemo.labels import IGNORE_INDEX
from segdemo.presets import make_processor

NUM_LABELS = len(ID2LABEL)


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "shapes", n_train=6, n_val=3)


# --------------------------------------------------------------------------- readers


def test_folder_pairs_are_matched_by_stem_and_sorted(folder):
    splits = data.load_folder(folder)
    assert splits.id2label == ID2LABEL
    assert (len(splits.train), len(splits.val), splits.val_carved) == (6, 3, False)
    names = [p.name for p in splits.train.pairs]
    assert names == sorted(names)
    assert all(p.image.stem == p.annotation.stem for p in splits.train.pairs)
    image, raw = splits.val[0]
    assert (
        image.mode == "RGB" and raw.shape == (image.height, image.width) and raw.dtype == np.int64
    )


def test_missing_val_split_is_carved_from_train_with_a_seed(tmp_path):
    root = write_folder(tmp_path / "d", n_train=10, n_val=0)
    a, b, c = (data.load_folder(root, val_fraction=0.2, seed=s) for s in (0, 0, 1))
    assert a.val_carved and (len(a.train), len(a.val)) == (8, 2)
    assert a.val.indices == b.val.indices  # same seed, same split
    assert a.val.indices != c.val.indices or a.train.indices != c.train.indices
    assert not set(a.val.indices) & set(a.train.indices)


@pytest.mark.parametrize(
    "mode, values",
    [
        ("L", [0, 3, 11, 255]),  # CamVid-style grey PNG
        ("P", [0, 1, 20, 255]),  # VOC-style palette PNG: the indices are the values
        ("I;16", [0, 149, 300, 1000]),  # 16-bit ids (> 255 classes)
        ("RGB", [0, 5, 7, 200]),  # grey saved as RGB: R = G = B is the class id
    ],
)
def test_read_annotation_keeps_raw_values(tmp_path, mode, values):
    raw = np.asarray(values, np.int64).reshape(2, 2)
    if mode == "RGB":
        image = Image.fromarray(np.repeat(raw.astype(np.uint8)[..., None], 3, axis=2))
    elif mode == "P":
        image = Image.fromarray(raw.astype(np.uint8), mode="L").convert("P")
        image.putdata(raw.ravel().tolist())
    elif mode == "I;16":
        image = Image.fromarray(raw.astype(np.uint16))
    else:
        image = Image.fromarray(raw.astype(np.uint8))
    path = tmp_path / "a.png"
    image.save(path)
    np.testing.assert_array_equal(data.read_annotation(path), raw)


def test_hf_dataset_dict_from_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    from synthetic import make_pair

    rows = [make_pair(rng) for _ in range(5)]
    table = datasets.Dataset.from_dict(
        {
            "image": [Image.fromarray(image) for image, _ in rows],
            "label": [Image.fromarray(labels) for _, labels in rows],
        },
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Image()}),
    )
    folder = tmp_path / "hf"
    datasets.DatasetDict({"train": table}).save_to_disk(str(folder))
    (folder / "id2label.json").write_text(json.dumps(ID2LABEL))

    splits = data.load_hf(str(folder), val_fraction=0.2, seed=0)
    assert splits.val_carved and (len(splits.train), len(splits.val)) == (4, 1)
    data.validate(splits.train, NUM_LABELS)
    image, raw = splits.train[0]
    np.testing.assert_array_equal(raw, rows[splits.train.indices[0]][1])
    assert "hf[train][" in splits.train.name(0)

    datasets.DatasetDict({"train": table.rename_column("label", "mask")}).save_to_disk(
        str(tmp_path / "bad")
    )
    with pytest.raises(data.DatasetError, match="label column"):
        data.load_hf(str(tmp_path / "bad"), id2label=folder / "id2label.json")


# --------------------------------------------------------------------------- validation


def _annotation(root, split="train", index=0):
    return root / split / "annotations" / f"{split}_{index:03d}.png"


def _image(root, split="train", index=0):
    return root / split / "images" / f"{split}_{index:03d}.png"


def _write_labels(path, change):
    labels = np.asarray(Image.open(path)).copy()
    Image.fromarray(change(labels)).save(path)


def _set_value(value):
    def change(labels):
        labels[0, 0] = value
        return labels

    return change


BREAKAGES = {
    # image without annotation: the message names the image and the file it expected
    "image without annotation": (
        lambda r: _annotation(r).unlink(),
        r"train_000\.png: image has no annotation",
    ),
    "annotation without image": (
        lambda r: _image(r, "val", 1).unlink(),
        r"val_001\.png: annotation has no image",
    ),
    "size mismatch": (
        lambda r: Image.open(_annotation(r)).resize((10, 10)).save(_annotation(r)),
        r"train_000\.png: image is 64x48 but its annotation is 10x10",
    ),
    "label value >= num_labels": (
        lambda r: _write_labels(_annotation(r, "val", 2), _set_value(7)),
        r"val_002\.png: label value 7 is not a class id 0\.\.2",
    ),
    "colour annotation": (
        lambda r: Image.new("RGB", (64, 48), (1, 2, 3)).save(_annotation(r)),
        r"train_000\.png: annotation is colour-coded",
    ),
    "unreadable image": (
        lambda r: _image(r).write_bytes(b"not a png at all"),
        r"train_000\.png: not an image file",
    ),
    "truncated image": (
        lambda r: _image(r).write_bytes(_image(r).read_bytes()[:200]),
        r"train_000\.png: the image data is damaged",
    ),
    "empty train split": (
        lambda r: [p.unlink() for p in (r / "train").rglob("*.png")],
        r"train: no image/annotation pairs",
    ),
    "no annotations folder": (
        lambda r: (
            [p.unlink() for p in (r / "train" / "annotations").glob("*")]
            and (r / "train" / "annotations").rmdir()
        ),
        r"annotations: folder not found",
    ),
    "id2label not JSON": (
        lambda r: (r / "id2label.json").write_text("{0: sky"),
        r"id2label\.json: not valid JSON",
    ),
    "id2label with a gap": (
        lambda r: (r / "id2label.json").write_text('{"0": "a", "2": "c"}'),
        r"id2label\.json: class ids must be 0\.\.1 without gaps",
    ),
    "id2label non-integer keys": (
        lambda r: (r / "id2label.json").write_text('{"sky": 0}'),
        r"id2label\.json: keys must be integer class ids",
    ),
    "id2label missing": (lambda r: (r / "id2label.json").unlink(), r"id2label\.json: not found"),
}


@pytest.mark.parametrize("case", list(BREAKAGES))
def test_validation_errors_name_the_file(folder, case):
    breakage, message = BREAKAGES[case]
    breakage(folder)
    with pytest.raises(data.DatasetError, match=message):
        splits = data.load_folder(folder)
        data.validate(splits.train, len(splits.id2label), split="train")
        data.validate(splits.val, len(splits.id2label), split="val")


@pytest.mark.parametrize(
    "raw_value, label_args, ok",
    [
        (11, {"ignore_index": 11}, True),  # CamVid void declared with --ignore-index
        (11, {}, False),  # ... and refused without it
        (255, {}, True),  # 255 is always ignore
        (3, {"reduce_labels": True}, True),  # ADE-style: raw 3 is class 2
        (4, {"reduce_labels": True}, False),  # raw 4 would be class 3 of 3 classes
    ],
)
def test_label_conventions_in_validation(folder, raw_value, label_args, ok):
    _write_labels(_annotation(folder), _set_value(raw_value))
    splits = data.load_folder(folder)
    if ok:
        counts = data.validate(splits.train, NUM_LABELS, **label_args)
        assert counts.shape == (NUM_LABELS,) and counts.sum() > 0
    else:
        with pytest.raises(data.DatasetError, match=f"label value {raw_value} "):
            data.validate(splits.train, NUM_LABELS, **label_args)


# --------------------------------------------------------------------------- transforms


def _halves(height=40, width=60):
    """Left half red = class 0, right half blue = class 1."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2] = (255, 0, 0)
    image[:, width // 2 :] = (0, 0, 255)
    labels = np.zeros((height, width), np.int64)
    labels[:, width // 2 :] = 1
    return Image.fromarray(image), labels


@pytest.mark.parametrize(
    "crop, scale_range",
    [
        ((32, 32), (1.0, 1.0)),  # crop inside the image
        ((64, 96), (0.5, 0.5)),  # image smaller than the crop: padded
        ((40, 60), (0.5, 2.0)),  # the default range
    ],
)
def test_augment_keeps_labels_aligned_with_pixels(crop, scale_range):
    image, labels = _halves()
    augment = transforms.Augment(crop, scale_range, jitter=(0, 0, 0, 0))
    for seed in range(8):
        pixels, out = augment(
            image, labels, (image.height, image.width), np.random.default_rng(seed)
        )
        assert pixels.shape[:2] == out.shape and out.shape[0] <= crop[0] and out.shape[1] <= crop[1]
        assert set(np.unique(out)) <= {0, 1}
        # away from the class edge the colour says the class (flips move both together)
        edge = np.zeros_like(out, bool)
        edge[:, 1:] |= out[:, 1:] != out[:, :-1]
        edge[:, :-1] |= out[:, 1:] != out[:, :-1]
        red = pixels[..., 0] > pixels[..., 2]
        np.testing.assert_array_equal(red[~edge], out[~edge] == 0)


def test_training_item_is_padded_with_ignore_and_zero():
    image, labels = _halves()
    processor = make_processor((40, 60))
    source = _ListSource([(image, labels)])
    dataset = transforms.SegmentationDataset(
        source,
        processor,
        augment=transforms.Augment((80, 100), (1.0, 1.0), flip=0.0, jitter=(0, 0, 0, 0)),
    )
    item = dataset[0]
    assert (
        item["pixel_values"].shape == (3, 80, 100) and item["pixel_values"].dtype == torch.float32
    )
    assert item["labels"].shape == (80, 100) and item["labels"].dtype == torch.int64
    assert (item["labels"][40:] == IGNORE_INDEX).all() and (
        item["labels"][:, 60:] == IGNORE_INDEX
    ).all()
    assert (item["pixel_values"][:, 40:] == 0).all()
    assert set(item["labels"][:40, :60].unique().tolist()) == {0, 1}


@pytest.mark.parametrize("size", [(48, 64), (30, 50)])
def test_normalize_equals_the_image_processor(size):
    """Our one-step normalisation gives the processor's numbers (no resize involved)."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    processor = make_processor(size)
    expected = processor(images=Image.fromarray(rgb), return_tensors="pt")["pixel_values"][
        0
    ].numpy()
    np.testing.assert_allclose(
        transforms.Normalize.from_processor(processor)(rgb), expected, atol=1e-5
    )


def test_eval_item_is_the_processor_output_with_labels_at_their_resolution():
    image, labels = _halves()
    processor = make_processor((32, 32))
    item = transforms.SegmentationDataset(_ListSource([(image, labels)]), processor)[0]
    expected = processor(images=image, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(item["pixel_values"], expected)
    np.testing.assert_array_equal(item["labels"].numpy(), labels)
    batch = transforms.collate_eval([item, item])
    assert batch["pixel_values"].shape == (2, 3, 32, 32) and len(batch["labels"]) == 2


@pytest.mark.parametrize(
    "jitter, changes",
    [
        ((0, 0, 0, 0), False),  # all off: identity
        ((0.25, 0.25, 0.25, 0.1), True),  # the guide's ColorJitter
    ],
)
def test_color_jitter(jitter, changes):
    rgb = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    a = np.asarray(
        transforms.color_jitter(Image.fromarray(rgb), *jitter, rng=np.random.default_rng(5))
    )
    b = np.asarray(
        transforms.color_jitter(Image.fromarray(rgb), *jitter, rng=np.random.default_rng(5))
    )
    np.testing.assert_array_equal(a, b)  # seeded
    assert a.shape == rgb.shape and a.dtype == np.uint8
    assert (not np.array_equal(a, rgb)) == changes


class _ListSource(data.Source):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def name(self, index):
        return f"item{index}"

    def __getitem__(self, index):
        return self.items[index]


def test_dataset_pickles_for_spawned_workers(folder):
    """macOS/Windows DataLoader workers are spawned: the dataset travels by pickle."""
    import pickle

    splits = data.load_folder(folder)
    dataset = transforms.SegmentationDataset(
        splits.train, make_processor((48, 64)), augment=transforms.Augment((32, 32))
    )
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy[0]["pixel_values"].shape == (3, 32, 32) and len(copy) == len(dataset)
