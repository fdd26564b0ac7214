"""segdemo.universal_transforms: masks stay aligned with the photo through augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.mask2former.image_processing_pil_mask2former import (
    Mask2FormerImageProcessorPil,
)

from segdemo.coco import Target, UniversalSource, load_universal
from segdemo.transforms import Augment, processor_size
from segdemo.universal_transforms import (
    UniversalEvalDataset,
    UniversalTrainDataset,
    collate_eval,
    collate_train,
    pack_masks,
    unpack_masks,
)
from tests.test_coco import H, W, write_instances, write_panoptic

RED, GREY = (230, 20, 20), (120, 120, 120)
NO_JITTER = (0.0, 0.0, 0.0, 0.0)


class ListSource(UniversalSource):
    """In-memory samples: ``[(PIL image, Target)]``."""

    def __init__(self, samples):
        self.samples = samples
        self.names = [f"sample_{i}" for i in range(len(samples))]

    def __getitem__(self, index):
        return self.samples[index]


def processor(height=H, width=W, **kwargs):
    return Mask2FormerImageProcessorPil(
        size={"height": height, "width": width},
        do_reduce_labels=False,
        ignore_index=255,
        **kwargs,
    )


def disc_sample(h=48, w=64, centre=(14, 18), radius=9) -> tuple[Image.Image, Target]:
    """A red disc (thing, class 1) on grey ground (stuff, class 0), off-centre so that a
    wrong flip or crop offset would misplace it."""
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2
    photo = np.empty((h, w, 3), np.uint8)
    photo[:], photo[disc] = GREY, RED
    return Image.fromarray(photo), Target.build([~disc, disc], [0, 1], [0, 0], [1, 2], (h, w))


def _red(pixel_values: torch.Tensor) -> np.ndarray:
    """Pixels that are the disc's red after normalisation (red far above green)."""
    return (pixel_values[0] - pixel_values[1]).numpy() > 2.0


@pytest.mark.parametrize(
    "n, overlapping",
    [(0, False), (3, False), (3, True), (40, True)],  # 40 overlapping masks need two planes
)
def test_pack_unpack_round_trip(n, overlapping):
    rng = np.random.default_rng(n)
    if overlapping:
        masks = rng.random((n, 9, 7)) < 0.3
    else:
        owner = rng.integers(0, n + 1, (9, 7))  # 0 = in no mask
        masks = owner[None] == np.arange(1, n + 1)[:, None, None]
    planes, packed_overlapping = pack_masks(masks)
    assert planes.dtype == np.int32
    assert packed_overlapping == (overlapping and n > 0)
    assert (unpack_masks(planes.astype(np.int64), n, packed_overlapping) == masks).all()


@pytest.mark.parametrize("seed", range(12))
def test_augmented_masks_coincide_with_the_disc(seed):
    torch.manual_seed(seed)
    dataset = UniversalTrainDataset(
        ListSource([disc_sample()]),
        processor(48, 64),
        Augment((32, 40), scale_range=(0.5, 2.0), flip=0.5, jitter=NO_JITTER),
        "panoptic",
        thing_ids=[1],
    )
    item = dataset[0]
    red = _red(item["pixel_values"])
    labels = item["class_labels"].tolist()
    assert item["mask_labels"].shape[1:] == (32, 40)
    assert ((item["mask_labels"] == 0) | (item["mask_labels"] == 1)).all()
    if 1 not in labels:  # the disc was cropped away: it is dropped, and no red is left
        assert red.sum() <= 2
        return
    disc = item["mask_labels"][labels.index(1)].numpy().astype(bool)
    iou = (disc & red).sum() / (disc | red).sum()
    assert iou > 0.8, f"disc mask and red pixels disagree (IoU {iou:.2f})"


def test_instances_cropped_away_are_dropped():
    # a small disc in the corner: a 16x16 crop of the 48x64 image misses it most of the time
    dataset = UniversalTrainDataset(
        ListSource([disc_sample(centre=(4, 4), radius=3)]),
        processor(48, 64),
        Augment((16, 16), scale_range=(1.0, 1.0), flip=0.0, jitter=NO_JITTER),
        "instance",
        thing_ids=[1],
    )
    seen = []
    for seed in range(30):
        torch.manual_seed(seed)
        item = dataset[0]
        assert len(item["mask_labels"]) == len(item["class_labels"])
        assert all(mask.any() for mask in item["mask_labels"])  # never an empty mask
        assert set(item["class_labels"].tolist()) <= {1}  # instance task: things only
        seen.append(len(item["class_labels"]))
    assert 0 in seen and 1 in seen


def test_padding_is_in_no_mask_and_marked_in_pixel_mask():
    torch.manual_seed(0)
    dataset = UniversalTrainDataset(
        ListSource([disc_sample()]),
        processor(48, 64),
        Augment((40, 48), scale_range=(0.5, 0.5), flip=0.0, jitter=NO_JITTER),  # 24x32 image
        "panoptic",
        thing_ids=[1],
    )
    item = dataset[0]
    assert item["pixel_mask"].dtype == torch.int64
    assert item["pixel_mask"][:24, :32].all() and item["pixel_mask"].sum() == 24 * 32
    assert item["mask_labels"][:, 24:].sum() == 0 and item["mask_labels"][:, :, 32:].sum() == 0
    assert item["pixel_values"][:, 24:].abs().sum() == 0  # padded with the mean colour
    # every real pixel is in exactly one mask here (the sample has no void)
    assert (item["mask_labels"][:, :24, :32].sum(0) == 1).all()


def test_crowd_and_void_are_in_no_mask_and_stuff_only_for_panoptic(tmp_path):
    splits = load_universal("panoptic", data_dir=write_panoptic(tmp_path / "pan"))
    _, target = splits.train[0]
    for task, classes in (("panoptic", [0, 1, 2, 3]), ("instance", [2, 3])):
        dataset = UniversalTrainDataset(splits.train, processor(), None, task, splits.thing_ids)
        item = dataset[0]  # no augmentation: resized to the processor size = the image size
        assert item["class_labels"].tolist() == classes
        kept = ~target.iscrowd & np.isin(target.class_ids, classes)
        assert (item["mask_labels"].numpy().astype(bool) == target.masks[kept]).all()
        crowd = target.masks[target.iscrowd][0]
        assert item["mask_labels"][:, crowd].sum() == 0
        void = ~target.masks.any(0)
        assert void.any() and item["mask_labels"][:, void].sum() == 0


def test_overlapping_instances_survive_flip_and_crop(tmp_path):
    splits = load_universal("instance", data_dir=write_instances(tmp_path / "inst"))
    _, target = splits.train[0]
    dataset = UniversalTrainDataset(
        splits.train,
        processor(),
        Augment((H, W), scale_range=(1.0, 1.0), flip=1.0, jitter=NO_JITTER),
        "instance",
        splits.thing_ids,
    )
    torch.manual_seed(0)
    item = dataset[0]
    kept = ~target.iscrowd
    assert item["class_labels"].tolist() == target.class_ids[kept].tolist()
    expected = target.masks[kept][:, :, ::-1]  # full-size crop, always flipped
    assert (item["mask_labels"].numpy().astype(bool) == expected).all()


def test_collate_train_and_dataloader_workers(tmp_path):
    splits = load_universal("panoptic", data_dir=write_panoptic(tmp_path / "pan"))
    dataset = UniversalTrainDataset(
        splits.train, processor(), Augment((24, 32)), "instance", splits.thing_ids
    )
    # batches are built in a worker process (collate runs there)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=3, num_workers=1, collate_fn=collate_train
    )
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (3, 3, 24, 32)
    assert batch["pixel_values"].dtype == torch.float32
    assert batch["pixel_mask"].shape == (3, 24, 32) and batch["pixel_mask"].dtype == torch.int64
    assert len(batch["mask_labels"]) == len(batch["class_labels"]) == 3
    for masks, classes in zip(batch["mask_labels"], batch["class_labels"], strict=True):
        assert masks.dtype == torch.float32 and classes.dtype == torch.int64
        assert masks.shape == (len(classes), 24, 32)


def test_eval_items_are_the_processors_own_output(tmp_path):
    splits = load_universal("panoptic", data_dir=write_panoptic(tmp_path / "pan"))
    proc = processor(64, 96)
    dataset = UniversalEvalDataset(splits.val, proc)
    image, target = splits.val[1]
    item = dataset[1]
    expected = proc(images=[image], return_tensors="pt")["pixel_values"][0]
    assert torch.equal(item["pixel_values"], expected)
    assert item["name"] == "val_1"
    assert (item["target"].masks == target.masks).all()  # full resolution, crowd kept
    batch = collate_eval([dataset[0], item])
    assert batch["pixel_values"].shape == (2, 3, 64, 96)
    assert batch["pixel_mask"].shape == (2, 64, 96) and batch["pixel_mask"].all()
    assert batch["names"] == ["val_0", "val_1"] and len(batch["targets"]) == 2


def test_collate_eval_pads_images_of_different_sizes():
    proc = Mask2FormerImageProcessorPil(size={"shortest_edge": 32, "longest_edge": 128})
    wide, tall = disc_sample(32, 64), disc_sample(64, 32)
    dataset = UniversalEvalDataset(ListSource([wide, tall]), proc)
    batch = collate_eval([dataset[0], dataset[1]])
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    assert batch["pixel_mask"][0, :32].all() and not batch["pixel_mask"][0, 32:].any()
    assert batch["pixel_mask"][1, :, :32].all() and not batch["pixel_mask"][1, :, 32:].any()


@pytest.mark.parametrize(
    "size, image_hw, expected",
    [
        ({"height": 192, "width": 256}, (360, 480), (192, 256)),
        ({"shortest_edge": 800, "longest_edge": 1333}, (480, 640), (800, 1067)),
        # very wide: the longest edge caps the scale (Mask2Former's hub processors)
        ({"shortest_edge": 800, "longest_edge": 1333}, (100, 1000), (133, 1333)),
    ],
)
def test_base_size_follows_the_processor(size, image_hw, expected):
    assert processor_size(Mask2FormerImageProcessorPil(size=size), *image_hw) == expected
