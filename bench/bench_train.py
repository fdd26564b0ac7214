"""Training throughput: train/run.py against the transformers guide's recipe, images/s.

    nice python bench/bench_train.py                       # CamVid from ../shared/datasets
    nice python bench/bench_train.py --batch-size 4 --steps 20 --threads 2 --num-workers 2
    nice python bench/bench_train.py --ablation   # also ours with the stock SegFormer head
    nice python bench/bench_train.py --bf16       # bf16 autocast on both sides

Both sides train the same real-size random-init SegFormer-B0 (segdemo preset
``segformer-b0``: hidden 32/64/160/256, 11 classes) on the same CamVid train images at
their native 360x480, with the same batch, CPU threads, DataLoader workers, AdamW lr 6e-5:

* **guide** -- the semantic segmentation task guide: a 🤗 ``datasets`` table with
  ``set_transform`` running colour jitter and the image processor on every batch, trained
  by ``transformers.Trainer``. (The guide's ``torchvision`` ColorJitter is replaced by
  segdemo's PIL jitter, the same ImageEnhance operations torchvision runs on PIL images:
  torchvision is not a dependency here.)
* **ours** -- ``train/run.py`` with its default augmentation (random scale 0.5-2.0, crop,
  flip, jitter: more work per image than the guide), normalisation in the Dataset, and
  SegFormer's decode head re-associated (:mod:`segdemo.fast_decoder`: the same function
  and parameters, the 1x1 fuse convolution moved before the upsampling).

Each side runs in its own process; images/s is measured over ``--steps`` optimizer steps
after ``--warmup`` steps, in wall time and, with ``--num-workers 0`` (the default, so the
data work runs in the measured process), per CPU second of that process: on a shared
machine wall time mostly measures the queue for a core. Prints a table and the ratios
ours/guide (target >= 1.5).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "camvid"
SIDES = {
    "guide": "guide (Trainer + set_transform)",
    "stock": "ours, --no-fast-decoder",
    "ours": "ours (train/run.py)",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data-dir", default=str(DEFAULT_DATA))
    p.add_argument("--ignore-index", type=int, default=11, help="raw void value (CamVid: 11)")
    p.add_argument("--size", type=int, nargs=2, default=(360, 480), metavar=("H", "W"))
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--num-workers", type=int, default=0, help="0: data work counts in the CPU time")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides")
    p.add_argument(
        "--ablation",
        action="store_true",
        help="also time train/run.py --no-fast-decoder (the stock SegFormer head)",
    )
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- the guide


def run_guide(args: argparse.Namespace) -> dict:
    import datasets
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from segdemo import data, presets
    from segdemo.transforms import color_jitter

    splits = data.load_folder(args.data_dir)
    pairs = splits.train.pairs
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    train_ds = datasets.Dataset.from_dict(
        {"image": [str(p.image) for p in pairs], "annotation": [str(p.annotation) for p in pairs]},
        features=features,
    )
    model, processor = presets.build_preset("segformer-b0", splits.id2label, tuple(args.size))
    # the guide maps no void value: point the loss at CamVid's raw void instead
    model.config.semantic_loss_ignore_index = args.ignore_index
    import numpy as np

    rng = np.random.default_rng(0)

    def train_transforms(example_batch):  # the guide's function, jitter as explained above
        images = [
            color_jitter(x.convert("RGB"), 0.25, 0.25, 0.25, 0.1, rng=rng)
            for x in example_batch["image"]
        ]
        labels = [x for x in example_batch["annotation"]]
        return processor(images, labels)

    train_ds.set_transform(train_transforms)
    wall: list[float] = []
    cpu: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *_, **__):
            wall.append(time.perf_counter())
            cpu.append(time.process_time())

    with tempfile.TemporaryDirectory() as out:
        training_args = TrainingArguments(
            output_dir=out,
            learning_rate=6e-5,
            per_device_train_batch_size=args.batch_size,
            max_steps=args.warmup + args.steps,
            save_strategy="no",
            eval_strategy="no",
            logging_steps=10**6,
            remove_unused_columns=False,
            report_to="none",
            dataloader_num_workers=args.num_workers,
            use_cpu=True,
            bf16=args.bf16,
            seed=0,
            disable_tqdm=True,
        )
        Trainer(
            model=model, args=training_args, train_dataset=train_ds, callbacks=[Clock()]
        ).train()
    return rates(args, wall[args.warmup - 1], wall[-1], cpu[args.warmup - 1], cpu[-1])


# ----------------------------------------------------------------------------- ours


def run_ours(args: argparse.Namespace, fast_decoder: bool = True) -> dict:
    from train import run

    if args.bf16:  # what `accelerate launch --mixed_precision bf16` sets for the Accelerator
        os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16"

    with tempfile.TemporaryDirectory() as tmp:
        # the same train split; a 2-image val split so the final evaluation stays short
        data_dir = Path(tmp) / "data"
        (data_dir / "val" / "images").mkdir(parents=True)
        (data_dir / "val" / "annotations").mkdir(parents=True)
        source = Path(args.data_dir)
        (data_dir / "train").symlink_to(source / "train", target_is_directory=True)
        (data_dir / "id2label.json").symlink_to(source / "id2label.json")
        for image in sorted((source / "val" / "images").iterdir())[:2]:
            (data_dir / "val" / "images" / image.name).symlink_to(image)
            annotation = source / "val" / "annotations" / f"{image.stem}.png"
            (data_dir / "val" / "annotations" / annotation.name).symlink_to(annotation)
        height, width = args.size
        result = run.main(
            [
                "--model",
                "segformer-b0",
                "--data-dir",
                str(data_dir),
                "--output-dir",
                str(Path(tmp) / "out"),
            ]
            + ["--ignore-index", str(args.ignore_index), "--batch-size", str(args.batch_size)]
            + ["--image-size", str(height), str(width), "--crop-size", str(height), str(width)]
            + ["--max-steps", str(args.warmup + args.steps), "--log-every", "1", "--lr", "6e-5"]
            + ["--num-workers", str(args.num_workers), "--eval-every", str(10**6)]
            + ([] if fast_decoder else ["--no-fast-decoder"])
        )
    records = {r["step"]: r for r in result["history"]["train"]}
    start, end = records[args.warmup], records[args.warmup + args.steps]
    return rates(args, start["elapsed"], end["elapsed"], start["cpu"], end["cpu"])


def rates(args: argparse.Namespace, wall_start, wall_end, cpu_start, cpu_end) -> dict:
    images = args.batch_size * args.steps
    return {
        "images_per_s": images / (wall_end - wall_start),
        "images_per_cpu_s": images / (cpu_end - cpu_start),
    }


# ----------------------------------------------------------------------------- main


def main() -> None:
    args = parse_args()
    if args.side:
        import torch

        torch.set_num_threads(args.threads)
        if args.side == "guide":
            result = run_guide(args)
        else:
            result = run_ours(args, fast_decoder=args.side == "ours")
        print("RESULT " + json.dumps({**result, "threads": torch.get_num_threads()}))
        return
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
    }
    results = {}
    sides = ["guide", "stock", "ours"] if args.ablation else ["guide", "ours"]
    for side in sides:
        command = [sys.executable, __file__, *sys.argv[1:], "--side", side]
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            sys.exit(f"{side} failed:\n{done.stderr[-3000:]}")
        results[side] = json.loads(lines[-1][len("RESULT ") :])
    h, w = args.size
    print(f"SegFormer-B0 random init, CamVid train {h}x{w}, batch {args.batch_size}, ", end="")
    print(
        f"{args.threads} threads, {args.num_workers} workers, {args.steps} steps after {args.warmup}"
    )
    keys = ["images_per_s"] + (["images_per_cpu_s"] if args.num_workers == 0 else [])
    print(f"{'recipe':<34}" + "".join(f"{k:>18}" for k in keys))
    for side in sides:
        print(f"{SIDES[side]:<34}" + "".join(f"{results[side][k]:>18.3f}" for k in keys))
    for side in sides[1:]:
        for key in keys:
            ratio = results[side][key] / results["guide"][key]
            target = " (target >= 1.5x)" if side == "ours" else ""
            print(f"ratio {side}/guide, {key}: {ratio:.2f}x{target}")


if __name__ == "__main__":
    main()
