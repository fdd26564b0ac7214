"""Panoptic training throughput: train/run.py against transformers' instance-segmentation
example recipe, images/s.

    nice python bench/bench_train_universal.py          # CamVid, converted to COCO panoptic
    nice python bench/bench_train_universal.py --num-workers 2
    nice python bench/bench_train_universal.py --scale-range 0.5 2.0   # ours' default crops
    nice python bench/bench_train_universal.py --data-dir DIR   # any COCO panoptic folder

Both sides train the same Mask2Former (preset ``mask2former-resnet-s``, random init, saved
once as a checkpoint folder that both load) on the same train images at 192x256, with the
same batch, torch threads (default 1, ``OMP_NUM_THREADS`` too), DataLoader workers, AdamW
(fused) lr, linear schedule, no weight decay:

* **baseline** -- ``examples/pytorch/instance-segmentation/run_instance_segmentation.py``:
  a 🤗 ``datasets`` table (``image`` + ``annotation``: R = class id + 1, G = instance id,
  0 = void, the README's ``--do_reduce_labels`` layout) whose ``with_transform`` runs, per
  image of each batch, the augmentation, ``np.unique`` over (class, instance) pairs and
  ``image_processor(images=..., segmentation_maps=..., instance_id_to_semantic_id=...)``;
  the script's ``collate_fn``; ``transformers.Trainer`` with the script's settings
  (``remove_unused_columns=False``, eval off, its default ``max_grad_norm`` 1.0).
  albumentations is not installed here: its ``HorizontalFlip(p=0.5)``,
  ``RandomBrightnessContrast(p=0.5)`` and ``HueSaturationValue(p=0.1)`` are replaced by the
  same operations in numpy/PIL (:class:`ExampleAugment`); the baseline does no scale or crop.
* **ours** -- ``train/run.py --task panoptic`` (``train.run.main`` in its own process),
  items built by :mod:`segdemo.universal_transforms` (no image processor in the hot path),
  with its augmentation: colour jitter (four PIL operations on every image: more work than
  the baseline's) and flip, and a random scale of the 192x256 base before a 192x256 crop.
  The scale is 1 by default (``--scale-range 1 1``): whole images, so both sides compute
  the loss on the same segments (Mask2Former's loss grows with the number of target masks;
  crops drop segments). ``--scale-range 0.5 2.0`` times train/run.py's default instead.

The data is a COCO panoptic folder; by default CamVid's train split converted by
``python -m segdemo convert semantic-to-panoptic`` (things: car, pedestrian, bicyclist),
else the synthetic one of tests/synthetic_panoptic.py. Images/s is measured over
``--steps`` optimizer steps after ``--warmup`` steps, in wall time and (``--num-workers 0``,
the default, so the data work runs in the measured process) per CPU second of that process.
The sides alternate (ours, baseline, ours, baseline, ...) for ``--rounds`` rounds, each in a
fresh process. Before timing, the targets of a few images without augmentation are built
by both pipelines and compared; each side prints the targets and loss of its first step.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CAMVID = ROOT.parent / "shared" / "datasets" / "camvid"
CAMVID_THINGS = "car,pedestrian,bicyclist"
SIDES = {
    "ours": "ours (train/run.py --task panoptic)",
    "baseline": "example (Trainer + with_transform)",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data-dir", help="a COCO panoptic folder (its train split is used)")
    p.add_argument("--size", type=int, nargs=2, default=(192, 256), metavar=("H", "W"))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--num-workers", type=int, default=0, help="0: data work counts in the CPU time")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument(
        "--scale-range",
        type=float,
        nargs=2,
        default=(1.0, 1.0),
        metavar=("MIN", "MAX"),
        help="ours' random scale before the crop; 1 1 = whole images, the targets the example "
        "trains on; train/run.py's default is 0.5 2.0",
    )
    p.add_argument("--work", help="prepared data + model here (kept, reused); default: a temp dir")
    p.add_argument("--synthetic", action="store_true", help="synthetic data even if CamVid exists")
    p.add_argument("--side", choices=SIDES, help="run one side in this process (needs --work)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- preparation


def prepare(args: argparse.Namespace, work: Path) -> dict:
    """``work/{data,hf,model}`` and ``work/meta.json``, once: the data both sides read and
    the one random-init checkpoint both start from."""
    if (work / "meta.json").is_file():
        return json.loads((work / "meta.json").read_text())
    import torch

    from segdemo import coco, presets
    from segdemo.checkpoint import save_checkpoint

    work.mkdir(parents=True, exist_ok=True)
    source = Path(args.data_dir) if args.data_dir else None
    if source is None and CAMVID.is_dir() and not args.synthetic:
        source = work / "source"
        subprocess.run(
            [sys.executable, "-m", "segdemo", "convert", "semantic-to-panoptic"]
            + ["--data-dir", str(CAMVID), "--things", CAMVID_THINGS, "--ignore-index", "11"]
            + ["--min-area", "64", "--out", str(source)],
            check=True,
            cwd=ROOT,
        )
    elif source is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from synthetic_panoptic import write_panoptic_folder

        source = write_panoptic_folder(work / "source", n_train=32, n_val=0, size=(96, 128))
    # ours: the whole train split, and 2 of its images as val so the final evaluation is short
    data = work / "data"
    (data / "val" / "images").mkdir(parents=True)
    (data / "val" / "panoptic").mkdir(parents=True)
    (data / "train").symlink_to((source / "train").resolve(), target_is_directory=True)
    doc = json.loads((source / "train" / "panoptic.json").read_text())
    ids = {image["id"] for image in doc["images"][:2]}
    val = {
        "images": [i for i in doc["images"] if i["id"] in ids],
        "annotations": [a for a in doc["annotations"] if a["image_id"] in ids],
        "categories": doc["categories"],
    }
    for image, annotation in zip(val["images"], val["annotations"], strict=True):
        for folder, name in (("images", image["file_name"]), ("panoptic", annotation["file_name"])):
            (data / "val" / folder / name).symlink_to((source / "train" / folder / name).resolve())
    (data / "val" / "panoptic.json").write_text(json.dumps(val))

    # the baseline: the example's annotation images (R = class + 1, G = instance, 0 = void)
    splits = coco.load_universal("panoptic", data_dir=str(data))
    train = splits.train
    (work / "hf").mkdir()
    images, annotations = [], []
    for index in range(len(train)):
        _, target = train[index]
        annotations.append(str(work / "hf" / f"{train.key(index)}.png"))
        images.append(str(train.records[index].image))
        write_annotation(target, annotations[-1])
    (work / "hf.json").write_text(json.dumps({"image": images, "annotation": annotations}))

    torch.manual_seed(0)
    model, processor = presets.build_preset("mask2former-resnet-s", splits.id2label, args.size)
    save_checkpoint(work / "model", model, processor)
    meta = {
        "source": str(source),
        "train_images": len(train),
        "id2label": splits.id2label,
        "thing_ids": sorted(splits.thing_ids),
    }
    (work / "meta.json").write_text(json.dumps(meta))
    return meta


def write_annotation(target, path: str) -> None:
    """A :class:`segdemo.coco.Target` as the example's RGB annotation PNG; crowd = void."""
    from PIL import Image

    keep = np.flatnonzero(~target.iscrowd)
    if len(keep) > 255 or (len(keep) and target.class_ids.max() >= 255):  # 8-bit channels
        raise SystemExit(f"{path}: {len(keep)} segments or class ids do not fit 8-bit R and G")
    rgb = np.zeros((*target.masks.shape[1:], 3), np.uint8)
    for instance, k in enumerate(keep, start=1):
        rgb[target.masks[k]] = (target.class_ids[k] + 1, instance, 0)
    Image.fromarray(rgb).save(path)


def check_targets(work: Path, meta: dict, count: int = 4) -> str:
    """Targets of the first ``count`` images without augmentation, built by both pipelines."""
    from PIL import Image

    from segdemo import coco, universal_transforms

    processor, pairs = load_example_processor(work), load_pairs(work)
    splits = coco.load_universal("panoptic", data_dir=str(work / "data"))
    ours_set = universal_transforms.UniversalTrainDataset(
        splits.train, load_our_processor(work), None, "panoptic", meta["thing_ids"]
    )
    same, agree, total = 0, 0, 0
    for index in range(min(count, len(ours_set))):
        ours = ours_set[index]
        image = np.array(Image.open(pairs["image"][index]).convert("RGB"))
        example = example_item(image, np.array(Image.open(pairs["annotation"][index])), processor)
        same += bool(
            ours["class_labels"].tolist() == example["class_labels"].tolist()
            and ours["mask_labels"].shape == example["mask_labels"].shape
        )
        if ours["mask_labels"].shape == example["mask_labels"].shape:
            agree += int((ours["mask_labels"] == example["mask_labels"]).sum())
            total += ours["mask_labels"].numel()
    share = f"{100 * agree / total:.2f}% of mask pixels equal" if total else "no masks compared"
    return f"{same}/{min(count, len(ours_set))} images with the same segments and classes, {share}"


# ----------------------------------------------------------------------------- the example


class ExampleAugment:
    """The example's ``A.Compose([HorizontalFlip(p=0.5), RandomBrightnessContrast(p=0.5),
    HueSaturationValue(p=0.1)])`` without albumentations, with its default limits:
    brightness +-0.2 of 255 and contrast x(1 +- 0.2) as one 8-bit lookup table; hue
    +-20/180 of the wheel, saturation +-30, value +-20 in PIL's 8-bit HSV. ``python random``
    as albumentations (DataLoader workers reseed it). Called as ``transform(image=, mask=)``."""

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> dict:
        from PIL import Image

        if random.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if random.random() < 0.5:
            alpha, beta = 1 + random.uniform(-0.2, 0.2), 255 * random.uniform(-0.2, 0.2)
            lut = np.clip(np.arange(256) * alpha + beta, 0, 255).astype(np.uint8)
            image = lut[image]
        if random.random() < 0.1:
            shifts = (random.uniform(-20, 20) * 256 / 180, random.uniform(-30, 30))
            hsv = np.array(Image.fromarray(np.ascontiguousarray(image)).convert("HSV"))
            wide = hsv.astype(np.int16)
            wide[..., 0] = (wide[..., 0] + round(shifts[0])) % 256
            wide[..., 1] += round(shifts[1])
            wide[..., 2] += round(random.uniform(-20, 20))
            hsv = np.clip(wide, 0, 255).astype(np.uint8)
            image = np.array(Image.fromarray(hsv, "HSV").convert("RGB"))
        return {"image": np.ascontiguousarray(image), "mask": np.ascontiguousarray(mask)}


def example_item(image: np.ndarray, annotation: np.ndarray, processor, transform=None) -> dict:
    """One image through the example's ``augment_and_transform_batch`` loop body."""
    semantic_and_instance = annotation[..., :2]
    if transform is not None:
        output = transform(image=image, mask=semantic_and_instance)
        image, semantic_and_instance = output["image"], output["mask"]
    pairs = np.unique(semantic_and_instance.reshape(-1, 2), axis=0)
    instance_id_to_semantic_id = {int(i): int(s) for s, i in pairs}
    inputs = processor(
        images=[image],
        segmentation_maps=[semantic_and_instance[..., 1]],
        instance_id_to_semantic_id=instance_id_to_semantic_id,
        return_tensors="pt",
    )
    return {k: inputs[k][0] for k in ("pixel_values", "mask_labels", "class_labels")}


def augment_and_transform_batch(examples, transform, image_processor) -> dict:
    batch = {"pixel_values": [], "mask_labels": [], "class_labels": []}
    for pil_image, pil_annotation in zip(examples["image"], examples["annotation"], strict=True):
        item = example_item(
            np.array(pil_image), np.array(pil_annotation), image_processor, transform
        )
        for key in batch:
            batch[key].append(item[key])
    return batch


def collate_fn(examples: list[dict]) -> dict:
    import torch

    batch = {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "class_labels": [e["class_labels"] for e in examples],
        "mask_labels": [e["mask_labels"] for e in examples],
    }
    if "pixel_mask" in examples[0]:
        batch["pixel_mask"] = torch.stack([e["pixel_mask"] for e in examples])
    return batch


def load_example_processor(work: Path):
    from transformers import AutoImageProcessor

    # the example's call: its README's --do_reduce_labels (class 0 = void) and the size
    size = json.loads((work / "model" / "preprocessor_config.json").read_text())["size"]
    return AutoImageProcessor.from_pretrained(
        str(work / "model"), do_resize=True, size=size, do_reduce_labels=True
    )


def load_our_processor(work: Path):
    from segdemo.checkpoint import load_checkpoint

    return load_checkpoint(work / "model")[1]  # what train/run.py's --model FOLDER loads


def load_pairs(work: Path) -> dict:
    return json.loads((work / "hf.json").read_text())


def run_baseline(args: argparse.Namespace, work: Path, meta: dict) -> dict:
    import datasets
    from transformers import (
        AutoModelForUniversalSegmentation,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    id2label = {int(k): v for k, v in meta["id2label"].items()}
    model = AutoModelForUniversalSegmentation.from_pretrained(
        str(work / "model"),
        label2id={v: k for k, v in id2label.items()},
        id2label=id2label,
        ignore_mismatched_sizes=True,
    )
    image_processor = load_example_processor(work)
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    train_ds = datasets.Dataset.from_dict(load_pairs(work), features=features)
    train_ds = train_ds.with_transform(
        partial(
            augment_and_transform_batch, transform=ExampleAugment(), image_processor=image_processor
        )
    )
    wall: list[float] = []
    cpu: list[float] = []
    first: dict = {}

    class Clock(TrainerCallback):
        def on_step_end(self, *_, **__):
            wall.append(time.perf_counter())
            cpu.append(time.process_time())

    class RecordingTrainer(Trainer):
        def compute_loss(self, model, inputs, *rest, **kwargs):
            result = super().compute_loss(model, inputs, *rest, **kwargs)
            if not first:
                loss = result[0] if isinstance(result, tuple) else result
                first.update(describe(inputs, meta), loss=float(loss))
            return result

    with tempfile.TemporaryDirectory() as out:
        training_args = TrainingArguments(
            output_dir=out,
            learning_rate=args.lr,
            per_device_train_batch_size=args.batch_size,
            max_steps=args.warmup + args.steps,
            save_strategy="no",
            eval_strategy="no",
            logging_steps=args.warmup + args.steps,
            remove_unused_columns=False,
            eval_do_concat_batches=False,
            batch_eval_metrics=True,
            report_to="none",
            dataloader_num_workers=args.num_workers,
            dataloader_persistent_workers=args.num_workers > 0,
            # no use_cpu: the device accelerate picks, as train/run.py's Accelerator does
            seed=0,
            disable_tqdm=True,
        )
        RecordingTrainer(
            model=model,
            args=training_args,
            train_dataset=train_ds,
            processing_class=image_processor,
            data_collator=collate_fn,
            callbacks=[Clock()],
        ).train()
    return {
        **rates(args, wall[args.warmup - 1], wall[-1], cpu[args.warmup - 1], cpu[-1]),
        "first_step": first,
        "processor": type(image_processor).__name__,
    }


# ----------------------------------------------------------------------------- ours


def run_ours(args: argparse.Namespace, work: Path, meta: dict) -> dict:
    from train import run, universal

    first: dict = {}
    loss_of = universal.UniversalRecipe.loss

    def recording_loss(self, model, batch):
        loss = loss_of(self, model, batch)
        if not first:
            first.update(describe(batch, meta), loss=float(loss))
        return loss

    universal.UniversalRecipe.loss = recording_loss
    height, width = args.size
    with tempfile.TemporaryDirectory() as out:
        result = run.main(
            ["--task", "panoptic", "--model", str(work / "model"), "--data-dir", str(work / "data")]
            + ["--output-dir", str(Path(out) / "run"), "--batch-size", str(args.batch_size)]
            + ["--image-size", str(height), str(width), "--crop-size", str(height), str(width)]
            + ["--max-steps", str(args.warmup + args.steps), "--log-every", "1"]
            + ["--lr", str(args.lr), "--weight-decay", "0", "--scheduler", "linear"]
            + ["--scale-range", *map(str, args.scale_range)]
            + ["--num-workers", str(args.num_workers), "--eval-every", str(10**6), "--seed", "0"]
        )
    records = {r["step"]: r for r in result["history"]["train"]}
    start, end = records[args.warmup], records[args.warmup + args.steps]
    return {
        **rates(args, start["elapsed"], end["elapsed"], start["cpu"], end["cpu"]),
        "first_step": first,
    }


# ----------------------------------------------------------------------------- shared


def describe(batch: dict, meta: dict) -> dict:
    """What the loss of a batch is computed on: masks per image, their kind and classes."""
    masks, classes = batch["mask_labels"], batch["class_labels"]
    things = set(meta["thing_ids"])
    labels = [int(c) for per_image in classes for c in per_image]
    values = {float(v) for m in masks for v in m.unique().tolist()}
    return {
        "pixel_values": list(batch["pixel_values"].shape),
        "masks_per_image": round(sum(len(m) for m in masks) / len(masks), 2),
        "thing_masks": sum(c in things for c in labels),
        "stuff_masks": sum(c not in things for c in labels),
        "mask_dtype": str(masks[0].dtype).replace("torch.", ""),
        "mask_values": sorted(values),
        "classes": sorted(set(labels)),
    }


def rates(args: argparse.Namespace, wall_start, wall_end, cpu_start, cpu_end) -> dict:
    images = args.batch_size * args.steps
    return {
        "images_per_s": images / (wall_end - wall_start),
        "images_per_cpu_s": images / (cpu_end - cpu_start),
    }


def data_ms_per_image(args: argparse.Namespace, work: Path, meta: dict, images: int = 16) -> dict:
    """Data work per training image of each pipeline, in this process (CPU ms)."""
    import torch

    from segdemo import coco, universal_transforms
    from segdemo.transforms import Augment

    processor = load_example_processor(work)
    splits = coco.load_universal("panoptic", data_dir=str(work / "data"))
    ours_set = universal_transforms.UniversalTrainDataset(
        splits.train,
        load_our_processor(work),
        # train/run.py's Augment at --crop-size = --image-size
        Augment(processor_hw(processor), tuple(args.scale_range)),
        "panoptic",
        meta["thing_ids"],
    )
    import datasets

    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    table = datasets.Dataset.from_dict(load_pairs(work), features=features).with_transform(
        partial(augment_and_transform_batch, transform=ExampleAugment(), image_processor=processor)
    )
    n = min(images, len(ours_set))
    torch.manual_seed(0)
    random.seed(0)
    result = {}
    for name, build in (
        ("ours", lambda: [ours_set[i] for i in range(n)]),
        ("baseline", lambda: table[:n]),  # decode + the example's transform for n images
    ):
        build()  # warm the file cache and the imports
        start = time.process_time()
        build()
        result[name] = 1000 * (time.process_time() - start) / n
    return result


def processor_hw(processor) -> tuple[int, int]:
    size = dict(processor.size)
    return int(size["height"]), int(size["width"])


# ----------------------------------------------------------------------------- main


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.side:
        import torch

        torch.set_num_threads(args.threads)
        work = Path(args.work)
        meta = json.loads((work / "meta.json").read_text())
        run_side = run_ours if args.side == "ours" else run_baseline
        result = run_side(args, work, meta)
        print("RESULT " + json.dumps({**result, "threads": torch.get_num_threads()}))
        return
    temp = None if args.work else tempfile.mkdtemp(prefix="bench-train-universal-")
    work = Path(args.work or temp)
    try:
        report(args, work)
    finally:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)


def report(args: argparse.Namespace, work: Path) -> None:
    import torch

    torch.set_num_threads(args.threads)
    meta = prepare(args, work)
    print(f"targets without augmentation, both pipelines: {check_targets(work, meta)}")
    data_ms = data_ms_per_image(args, work, meta)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "PYTHONPATH": str(ROOT),
    }
    results: dict[str, list[dict]] = {side: [] for side in SIDES}
    for round_index in range(args.rounds):
        for side in SIDES:  # ours, baseline, ours, baseline, ...
            command = [sys.executable, __file__, "--work", str(work), "--side", side]
            command += cli_options(args)
            done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode != 0 or not lines:
                sys.exit(f"{side} failed:\n{done.stderr[-3000:]}")
            results[side].append(json.loads(lines[-1][len("RESULT ") :]))
            r = results[side][-1]
            print(
                f"round {round_index + 1} {side:<8} {r['images_per_s']:.3f} images/s, "
                f"{r['images_per_cpu_s']:.3f} images/CPU-s",
                flush=True,
            )
    print_table(args, meta, results, data_ms)


def cli_options(args: argparse.Namespace) -> list[str]:
    """The timing options a side process needs (data and model come from ``--work``)."""
    return (
        ["--size", *map(str, args.size), "--batch-size", str(args.batch_size)]
        + ["--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]
        + ["--num-workers", str(args.num_workers), "--lr", str(args.lr)]
        + ["--scale-range", *map(str, args.scale_range)]
    )


def print_table(args, meta: dict, results: dict, data_ms: dict) -> None:
    h, w = args.size
    print(
        f"\nMask2Former mask2former-resnet-s (random init), {meta['train_images']} panoptic "
        f"train images at {h}x{w}, batch {args.batch_size}, {args.threads} torch thread(s), "
        f"{args.num_workers} workers, {args.steps} steps after {args.warmup}, "
        f"{args.rounds} rounds alternating; ours' scale range {args.scale_range[0]:g}-"
        f"{args.scale_range[1]:g}"
    )
    keys = ["images_per_s"] + (["images_per_cpu_s"] if args.num_workers == 0 else [])
    header = "".join(f"{k.replace('_', ' ') + ', min':>24}{'median':>9}" for k in keys)
    print(f"{'recipe':<38}{header}{'data CPU ms/img':>17}")
    for side, label in SIDES.items():
        cells = "".join(
            f"{min(r[k] for r in results[side]):>24.3f}"
            f"{statistics.median(r[k] for r in results[side]):>9.3f}"
            for k in keys
        )
        print(f"{label:<38}{cells}{data_ms[side]:>17.1f}")
    for key in keys:
        # round by round: each pair ran back to back, so a drift of the machine's speed
        # between rounds cancels out of its ratio
        pairs = [o[key] / b[key] for o, b in zip(results["ours"], results["baseline"], strict=True)]
        of_medians = statistics.median(r[key] for r in results["ours"]) / statistics.median(
            r[key] for r in results["baseline"]
        )
        paired = statistics.median(pairs)
        print(
            f"ratio ours/baseline, {key}: {paired:.2f}x median of rounds (rounds: "
            f"{', '.join(f'{p:.2f}' for p in pairs)}; ratio of medians {of_medians:.2f}x); "
            f"target >= 1.2x {'met' if paired >= 1.2 else 'NOT met'}"
        )
    print(f"example's image processor: {results['baseline'][0]['processor']}")
    for side in SIDES:
        first = results[side][0]["first_step"]
        print(f"step 1, {side}: loss {first.pop('loss'):.3f}, targets {json.dumps(first)}")


if __name__ == "__main__":
    main()
