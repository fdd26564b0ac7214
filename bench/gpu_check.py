"""segdemo's GPU checks in one go, printed as one table (run by ``bench/gpu_check.sh``).

    bash bench/gpu_check.sh                  # on a CUDA machine: the full settings (~3 min)
    GPU_CHECK_TINY=1 bash bench/gpu_check.sh # tiny settings, any machine (~2 min on 2 CPUs)
    python bench/gpu_check.py --tiny --json results.json

Rows (each on CUDA when present, else on the CPU, which the device column says):

* **parity**: :func:`segdemo.segment.segment` vs ``transformers.pipeline("image-segmentation")``
  on the same device, semantic (tiny SegFormer), instance and panoptic (tiny Mask2Former),
  built like ``tests/builders.py``; labels, scores and every mask must be identical;
* **inference**: a real-size random SegFormer-B0 (150 classes, 512x512 input;
  ``bench/bench_inference.py``'s model and photo) at 1024x768 and 4000x3000 (12 MP):
  best-of-3 seconds of ``segment()`` and of the pipeline, label maps compared, and peak
  CUDA memory per side;
* **training**: ``train/run.py`` under ``accelerate launch`` for 50 steps (SegFormer-B0
  preset, 8 synthetic 512x512 images per step), ``--mixed_precision no`` and ``bf16``:
  ms per step, first and last training loss, val mIoU;
* **metric**: :class:`segdemo.metrics.ConfusionMatrix` counting on the device
  (``torch.bincount``) for two workers whose counts are then summed, as a distributed
  evaluation does, vs one CPU matrix: counts must be identical; ms per 512x512 map.
  CUDA only (CPU tensors are counted by NumPy).

A row whose check fails says FAILED with the reason; the exit code is then 1. Tiny
settings (``--tiny`` or ``GPU_CHECK_TINY=1``) shrink images, models and steps to prove the
script end to end on a machine without a GPU; their figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

PERMISSIVE = {"threshold": 0.0, "mask_threshold": 0.0, "overlap_mask_area_threshold": 0.0}


@dataclass
class Row:
    check: str
    setting: str
    device: str
    result: str
    figures: str = ""


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _pipeline(loaded):
    from transformers import pipeline

    processor = loaded.processor
    return pipeline(
        "image-segmentation",
        model=loaded.model,
        image_processor=getattr(processor, "image_processor", processor),
        tokenizer=getattr(processor, "tokenizer", None),
        device=loaded.device,
    )


def _photo(height: int, width: int):
    """Smooth structure plus noise (as tests/test_segment.py's photo), any size."""
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 3, y * 5, (x + y) * 2], axis=-1) % 256
    noise = rng.integers(0, 60, size=(height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


# --------------------------------------------------------------------------- checks


def check_parity(tmp: Path, tiny: bool) -> list[Row]:
    """segment() == pipeline on this device for the three tasks."""
    from builders import build_tiny

    from segdemo.models import load_model
    from segdemo.segment import segment

    folders = {f: build_tiny(f, tmp / f) for f in ("segformer", "mask2former")}
    sizes = [(48, 80)] if tiny else [(48, 80), (480, 640)]
    rows = []
    for family, task in (
        ("segformer", "semantic"),
        ("mask2former", "instance"),
        ("mask2former", "panoptic"),
    ):
        loaded = load_model(str(folders[family]), allow_any=True)
        pipe = _pipeline(loaded)
        kwargs = {} if task == "semantic" else PERMISSIVE
        problems, counts = [], []
        for height, width in sizes:
            photo = _photo(height, width)
            expected = pipe(photo, subtask=task, **kwargs)
            result = segment(loaded, photo, task, **kwargs)
            counts.append(len(expected))
            problems += _parity_problems(result, expected, f"{width}x{height}")
        rows.append(
            Row(
                "parity",
                f"{task}, tiny {family}, " + ", ".join(f"{w}x{h}" for h, w in sizes),
                loaded.device,
                "identical" if not problems else "FAILED: " + "; ".join(problems[:3]),
                f"{'/'.join(map(str, counts))} segments",
            )
        )
    return rows


def _parity_problems(result, expected: list[dict], where: str) -> list[str]:
    if [s.label for s in result.segments] != [e["label"] for e in expected]:
        return [f"{where}: labels differ"]
    if [s.score for s in result.segments] != [e["score"] for e in expected]:
        return [f"{where}: scores differ"]
    for seg, ref in zip(result.segments, expected, strict=True):
        differ = int((result.mask(seg.id) != (np.asarray(ref["mask"]) == 255)).sum())
        if differ:
            return [f"{where}: mask of {seg.label} differs in {differ} pixels"]
    return []


def check_inference(tmp: Path, tiny: bool) -> list[Row]:
    """segment() vs the pipeline on a real-size SegFormer-B0 at two image sizes."""
    import torch
    from bench_inference import build_model, make_image

    from segdemo.models import load_model
    from segdemo.segment import segment

    folder = build_model(tmp / "segformer-b0-random")
    loaded = load_model(str(folder), allow_any=True)
    pipe = _pipeline(loaded)
    label2id = {v: int(k) for k, v in loaded.model.config.id2label.items()}
    sizes = [(256, 192), (640, 480)] if tiny else [(1024, 768), (4000, 3000)]
    repeat = 1 if tiny else 3

    def ours(image):
        return segment(loaded, image, "semantic").label_map

    def theirs(image):  # bench_inference.py's baseline: the label map from the masks
        seg = np.zeros((image.height, image.width), dtype=np.int64)
        for out in pipe(image, subtask="semantic"):
            seg[np.asarray(out["mask"]) > 0] = label2id[out["label"]]
        return seg

    rows = []
    for width, height in sizes:
        image = make_image(width, height)
        figures, maps = {}, {}
        for side, fn in (("segdemo", ours), ("pipeline", theirs)):
            maps[side] = fn(image)  # warm-up
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            best = math.inf
            for _ in range(repeat):
                synchronize()
                start = time.perf_counter()
                fn(image)
                synchronize()
                best = min(best, time.perf_counter() - start)
            peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
            figures[side] = (best, peak)
        same = np.array_equal(maps["segdemo"], maps["pipeline"])
        (ours_s, ours_mb), (theirs_s, theirs_mb) = figures["segdemo"], figures["pipeline"]
        text = f"segdemo {ours_s:.3f} s, pipeline {theirs_s:.3f} s ({ours_s / theirs_s:.2f}x)"
        if ours_mb is not None:
            text += f"; peak CUDA {ours_mb:.0f} / {theirs_mb:.0f} MB"
        differ = int((maps["segdemo"] != maps["pipeline"]).sum())
        rows.append(
            Row(
                "inference",
                f"SegFormer-B0 random, {width}x{height}, best of {repeat}",
                loaded.device,
                "identical label maps" if same else f"FAILED: {differ} pixels differ",
                text,
            )
        )
    return rows


def check_training(tmp: Path, tiny: bool) -> list[Row]:
    """``accelerate launch train/run.py``: 50 steps in fp32 and in bf16."""
    from builders import build_tiny
    from synthetic import write_folder

    size = 64 if tiny else 512
    steps = 5 if tiny else 50
    batch = 2 if tiny else 8
    data = write_folder(tmp / "shapes", n_train=4 * batch, n_val=4, size=(size, size))
    model = str(build_tiny("segformer", tmp / "tiny-seg")) if tiny else "segformer-b0"
    rows = []
    for precision in ("no", "bf16"):
        out = tmp / f"train-{precision}"
        command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1"]
        command += ["--num_machines", "1", "--mixed_precision", precision]
        command += ["--dynamo_backend", "no", str(ROOT / "train" / "run.py")]
        command += ["--model", model, "--data-dir", str(data), "--output-dir", str(out)]
        command += ["--max-steps", str(steps), "--batch-size", str(batch)]
        command += ["--image-size", str(size), str(size), "--crop-size", str(size), str(size)]
        command += ["--eval-every", str(steps), "--log-every", "1", "--no-resume"]
        command += ["--num-workers", "0" if tiny else "4"]
        setting = f"{model if not tiny else 'tiny SegFormer'}, {steps} steps x {batch} x {size}px"
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - started
        label = "fp32" if precision == "no" else "bf16"
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
            rows.append(Row(f"training {label}", setting, device(), f"FAILED: {reason}"))
            continue
        history = json.loads((out / "history.json").read_text())
        train = history["train"]
        losses = [r["loss"] for r in train]
        seconds = train[-1]["elapsed"]
        miou = history["eval"][-1].get("mean_iou")
        ran_as = json.loads((out / "training_config.json").read_text())["mixed_precision"]
        if ran_as != precision:
            result = f"FAILED: ran with mixed_precision={ran_as}"
        elif not all(math.isfinite(v) for v in losses) or train[-1]["step"] != steps:
            result = "FAILED: loss not finite"
        else:
            result = "ok"
        rows.append(
            Row(
                f"training {label}",
                setting,
                device(),
                result,
                f"{1000 * seconds / steps:.0f} ms/step ({wall:.0f} s with start-up); "
                f"loss {losses[0]:.4f} -> {losses[-1]:.4f}; val mIoU {miou:.4f}",
            )
        )
    return rows


def check_metric(tmp: Path, tiny: bool) -> list[Row]:
    """Two workers count on the device and sum, vs one matrix counted by NumPy."""
    import torch
    from bench_metrics import IGNORE, NUM_LABELS, make_maps

    from segdemo.metrics import ConfusionMatrix

    count = 8 if tiny else 64
    setting = f"{count} maps 512x512, {NUM_LABELS} classes, 2 workers summed"
    if not torch.cuda.is_available():
        return [Row("metric", setting, "cpu", "skipped: needs CUDA (CPU tensors use NumPy)")]
    preds, refs = make_maps(count, 512, seed=0)
    reference = ConfusionMatrix(NUM_LABELS, IGNORE)
    start = time.perf_counter()
    for pred, ref in zip(preds, refs, strict=True):
        reference.update(pred, ref)
    cpu_counts = reference.counts
    cpu_ms = 1000 * (time.perf_counter() - start) / count
    on_device = [
        (torch.as_tensor(p).cuda(), torch.as_tensor(r).cuda())
        for p, r in zip(preds, refs, strict=True)
    ]
    half = count // 2
    synchronize()
    start = time.perf_counter()
    workers = []
    for share in (on_device[:half], on_device[half:]):
        matrix = ConfusionMatrix(NUM_LABELS, IGNORE)
        for pred, ref in share:
            matrix.update(pred, ref)
        workers.append(torch.as_tensor(matrix.counts, device="cuda"))
    total = (workers[0] + workers[1]).cpu().numpy()  # what the all-reduce sums
    synchronize()
    gpu_ms = 1000 * (time.perf_counter() - start) / count
    same = np.array_equal(total, cpu_counts)
    return [
        Row(
            "metric",
            setting,
            "cuda",
            "identical counts" if same else "FAILED: counts differ",
            f"device {gpu_ms:.2f} ms/map, NumPy {cpu_ms:.2f} ms/map ({cpu_ms / gpu_ms:.1f}x)",
        )
    ]


CHECKS = {
    "parity": check_parity,
    "inference": check_inference,
    "training": check_training,
    "metric": check_metric,
}


# --------------------------------------------------------------------------- table


def table(rows: list[Row]) -> str:
    columns = ("check", "setting", "device", "result", "figures")
    cells = [[getattr(r, c) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        lines.append("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tiny",
        action="store_true",
        default=os.environ.get("GPU_CHECK_TINY", "") not in ("", "0"),
        help="seconds-sized settings (also GPU_CHECK_TINY=1): proves the script, not the GPU",
    )
    parser.add_argument("--only", nargs="+", choices=list(CHECKS), help="run these checks only")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    print(f"# torch {torch.__version__}, {name}; {'tiny' if args.tiny else 'full'} settings")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for check, run in CHECKS.items():
            if args.only and check not in args.only:
                continue
            started = time.perf_counter()
            folder = Path(tmp) / check
            folder.mkdir()
            try:
                rows += run(folder, args.tiny)
            except Exception as err:  # one broken check must not hide the others' rows
                reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
                rows.append(Row(check, "", device(), f"FAILED: {type(err).__name__}: {reason}"))
            print(f"# {check}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    return 1 if any(r.result.startswith("FAILED") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
