"""Semantic inference: segdemo vs ``transformers.pipeline("image-segmentation")``.

    nice python bench/bench_inference.py [--repeat 3] [--sizes 1024x768 4000x3000]

Model: a real-size SegFormer-B0 (hidden sizes 32/64/160/256, depths 2/2/2/2, decoder
256, 150 labels, 512x512 processor) with random weights (hub weights are not
downloadable here; speed and memory do not depend on the values). Image: the
transformers guide's street photo from ``../shared/datasets`` resized to each size
(a synthetic picture when that folder is absent).

Each side runs in its own fresh subprocess per size, so peak RSS (``ru_maxrss``, the
whole process: Python, torch, model and image included) belongs to that side alone:

* baseline: ``pipeline(image, subtask="semantic")``, the label map assembled from its
  per-class masks, then the guide's per-class palette loop and 50 % blend;
* segdemo: ``segment(loaded, image, "semantic")``, then ``render.colorize`` (one table
  lookup) and the same blend.

Label maps must be identical (asserted). Times are the best of ``--repeat`` runs after
one warm-up; "infer" is up to the label map, "total" includes colouring; wall-clock and
CPU seconds (all threads) are both printed, CPU time being the steadier one on a shared
machine.
Targets (issue 2): 1024x768 total <= 0.5x; 4000x3000 peak RSS <= 1.5 GB and time <= 0.3x.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PHOTO = (
    ROOT.parent / "shared" / "datasets" / "samples" / "hf_docs_images" / "segmentation_input.jpg"
)


def build_model(folder: Path) -> Path:
    """Random-init SegFormer-B0 with 150 ADE-sized classes, saved by segdemo's checkpoint path."""
    import torch
    from transformers import (
        SegformerConfig,
        SegformerForSemanticSegmentation,
        SegformerImageProcessorPil,
    )

    from segdemo.checkpoint import save_checkpoint

    torch.manual_seed(0)
    config = SegformerConfig(
        hidden_sizes=[32, 64, 160, 256],
        depths=[2, 2, 2, 2],
        decoder_hidden_size=256,
        num_labels=150,
        id2label={i: f"class_{i}" for i in range(150)},
        label2id={f"class_{i}": i for i in range(150)},
    )
    model = SegformerForSemanticSegmentation(config).eval()
    processor = SegformerImageProcessorPil(size={"height": 512, "width": 512})
    return save_checkpoint(folder, model, processor)


def make_image(width: int, height: int):
    from PIL import Image

    if PHOTO.is_file():
        return Image.open(PHOTO).convert("RGB").resize((width, height), Image.BICUBIC)
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.BICUBIC)


def palette(n: int) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 255, (n, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- the two sides


def run_pipeline(folder: Path, image, colors: np.ndarray) -> tuple[np.ndarray, dict]:
    from transformers import pipeline

    pipe = pipeline("image-segmentation", model=str(folder))
    label2id = {v: int(k) for k, v in pipe.model.config.id2label.items()}

    def infer():
        outputs = pipe(image, subtask="semantic")
        seg = np.zeros((image.height, image.width), dtype=np.int64)
        for out in outputs:
            seg[np.asarray(out["mask"]) > 0] = label2id[out["label"]]
        return seg

    def total():
        seg = infer()
        # the guide: one full-image pass per class, then a 50 % blend
        color_seg = np.zeros((seg.shape[0], seg.shape[1], 3), dtype=np.uint8)
        for label, color in enumerate(colors):
            color_seg[seg == label, :] = color
        blended = (np.asarray(image) * 0.5 + color_seg * 0.5).astype(np.uint8)
        return seg, blended

    return infer, total


def run_segdemo(folder: Path, image, colors: np.ndarray):
    from segdemo.checkpoint import load_checkpoint
    from segdemo.models import LoadedModel
    from segdemo.registry import local_spec
    from segdemo.render import colorize
    from segdemo.result import Task
    from segdemo.segment import segment

    model, processor = load_checkpoint(folder)
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    loaded = LoadedModel(
        local_spec(folder), model, processor, "cpu", id2label, (Task.SEMANTIC,), "segformer"
    )

    def infer():
        return segment(loaded, image, Task.SEMANTIC).label_map

    def total():
        seg = infer()
        blended = ((np.asarray(image, dtype=np.uint16) + colorize(seg, colors)) // 2).astype(
            np.uint8
        )
        return seg, blended

    return infer, total


def worker(side: str, folder: Path, width: int, height: int, repeat: int, out: Path) -> None:
    """Measure one side at one size in this (fresh) process; print JSON."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    image = make_image(width, height)
    colors = palette(150)
    infer, total = (run_pipeline if side == "pipeline" else run_segdemo)(folder, image, colors)
    seg, _ = total()  # warm-up, and the answer to compare
    np.save(out, seg.astype(np.int32))
    # wall-clock and CPU seconds (all threads): on a shared machine the CPU time is the
    # steadier of the two, since waiting for a core does not count
    times = {"infer": [], "total": [], "infer_cpu": [], "total_cpu": []}
    for _ in range(repeat):
        for name, fn in (("infer", infer), ("total", total)):
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - wall)
            times[f"{name}_cpu"].append(time.process_time() - cpu)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps({name: min(values) for name, values in times.items()} | {"peak_rss_mb": peak_mb})
    )


def measure(
    side: str, folder: Path, size: tuple[int, int], repeat: int, tmp: Path
) -> tuple[dict, np.ndarray]:
    out = tmp / f"{side}-{size[0]}x{size[1]}.npy"
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        side,
        str(folder),
        str(size[0]),
        str(size[1]),
        str(repeat),
        str(out),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise SystemExit(f"{side} at {size} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1]), np.load(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", nargs="+", default=["1024x768", "4000x3000"])
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        side, folder, width, height, repeat, out = args.worker
        worker(side, Path(folder), int(width), int(height), int(repeat), Path(out))
        return

    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads default"
    )
    print(
        f"# image: {'guide street photo' if PHOTO.is_file() else 'synthetic'}; best of {args.repeat}\n"
    )
    header = (
        f"| {'size':>9} | {'side':8} | {'infer s':>8} | {'total s':>8} | {'infer cpu s':>11} "
        f"| {'total cpu s':>11} | {'peak RSS MB':>11} |"
    )
    rows, ratios = (
        [header, "|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|"],
        [],
    )
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        tmp = Path(tmp)
        folder = build_model(tmp / "segformer-b0-random")
        for size in sizes:
            results = {}
            for side in ("pipeline", "segdemo"):
                results[side], seg = measure(side, folder, size, args.repeat, tmp)
                results[side]["seg"] = seg
            same = np.array_equal(results["pipeline"]["seg"], results["segdemo"]["seg"])
            if not same:
                diff = int((results["pipeline"]["seg"] != results["segdemo"]["seg"]).sum())
                raise SystemExit(f"label maps differ at {size}: {diff} pixels")
            for side in ("pipeline", "segdemo"):
                r = results[side]
                rows.append(
                    f"| {size[0]}x{size[1]:<4} | {side:8} | {r['infer']:8.3f} | {r['total']:8.3f} "
                    f"| {r['infer_cpu']:11.3f} | {r['total_cpu']:11.3f} | {r['peak_rss_mb']:11.0f} |"
                )
            p, s = results["pipeline"], results["segdemo"]
            ratios.append(
                f"{size[0]}x{size[1]}: identical label maps; wall infer {s['infer'] / p['infer']:.3f}x, "
                f"total {s['total'] / p['total']:.3f}x; CPU infer {s['infer_cpu'] / p['infer_cpu']:.3f}x, "
                f"total {s['total_cpu'] / p['total_cpu']:.3f}x; peak RSS {s['peak_rss_mb'] / p['peak_rss_mb']:.3f}x "
                f"({s['peak_rss_mb']:.0f} vs {p['peak_rss_mb']:.0f} MB)"
            )
    print("\n".join(rows))
    print()
    print("\n".join(ratios))


if __name__ == "__main__":
    main()
