"""Palette rendering at 12 MP: segdemo's table lookup vs the transformers guide's per-class loop.

    nice python bench/bench_render.py [--height 3000 --width 4000 --classes 150 --repeat 3]

The baseline is the loop from the transformers semantic-segmentation guide,

    for label, color in enumerate(palette):
        color_seg[seg == label, :] = color

(one full-image compare and masked write per class; the guide's BGR swap is left out).
Both must give identical images (asserted). Then the full ``render()`` (alpha overlay,
contours, labels, legend) is timed on the same map as a semantic result, and on an
instance result with 100 segments. Times are the best of ``--repeat`` runs, in seconds.
Target (issue 2): colorize <= 0.05x the loop.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segdemo.palettes import PALETTES  # noqa: E402
from segdemo.render import colorize, render  # noqa: E402
from segdemo.result import Segment, SegmentationResult, Task, region_stats, segments_from_label_map  # noqa: E402


def guide_loop(seg: np.ndarray, palette: np.ndarray) -> np.ndarray:
    color_seg = np.zeros((seg.shape[0], seg.shape[1], 3), dtype=np.uint8)
    for label, color in enumerate(palette):
        color_seg[seg == label, :] = color
    return color_seg


def best_of(repeat: int, fn, *args, **kwargs) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return best, out


def blocky_label_map(height: int, width: int, classes: int, seed: int = 0) -> np.ndarray:
    """Regions like a real prediction: a coarse random grid of all classes, upsampled by nearest."""
    rng = np.random.default_rng(seed)
    grid_h, grid_w = 30, 40
    coarse = rng.permutation(np.resize(np.arange(classes), grid_h * grid_w)).reshape(grid_h, grid_w)
    rows = np.arange(height) * grid_h // height
    cols = np.arange(width) * grid_w // width
    return coarse[rows[:, None], cols[None, :]].astype(np.int32)


def instance_result(
    label_map: np.ndarray, count: int, id2label: dict[int, str]
) -> SegmentationResult:
    """``count`` instances (ids 1..count) over the map's first classes; the rest is background (0)."""
    instance_map = np.where(label_map < count, label_map + 1, 0).astype(np.int32)
    segments = [
        Segment(i, id2label[(i - 1) % len(id2label)], (i - 1) % 10, 0.9, area, bbox, True)
        for i, area, bbox in region_stats(instance_map)
        if i
    ]
    return SegmentationResult(Task.INSTANCE, instance_map, segments, id2label)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    palette = PALETTES["ade20k"].colors
    if args.classes > len(palette):
        parser.error(f"--classes at most {len(palette)} (the ADE20K palette)")
    palette = palette[: args.classes]
    id2label = dict(enumerate(PALETTES["ade20k"].names[: args.classes]))
    seg = blocky_label_map(args.height, args.width, args.classes)
    image = np.random.default_rng(1).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    megapixels = args.height * args.width / 1e6
    print(
        f"{args.width}x{args.height} ({megapixels:.1f} MP), {args.classes} classes present, best of {args.repeat}"
    )
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}"
    )

    loop_s, expected = best_of(args.repeat, guide_loop, seg, palette)
    ours_s, got = best_of(args.repeat, colorize, seg, palette)
    assert np.array_equal(got, expected), "colorize differs from the guide's loop"

    semantic = SegmentationResult(
        Task.SEMANTIC, seg, segments_from_label_map(seg, id2label), id2label
    )
    instances = instance_result(seg, 100, id2label)
    rows = [("guide per-class loop", loop_s), ("segdemo colorize (table lookup)", ours_s)]
    for name, result, options in [
        (
            "render semantic: overlay only",
            semantic,
            dict(contours=False, labels=False, legend=False),
        ),
        ("render semantic: + contours", semantic, dict(labels=False, legend=False)),
        ("render semantic: all (labels, legend)", semantic, {}),
        ("render instance (100 segments): all", instances, {}),
    ]:
        seconds, _ = best_of(args.repeat, render, image, result, palette, **options)
        rows.append((name, seconds))

    print(f"\n| {'step':<40} | {'seconds':>8} | {'vs loop':>8} |")
    print(f"|{'-' * 42}|{'-' * 9}:|{'-' * 9}:|")
    for name, seconds in rows:
        print(f"| {name:<40} | {seconds:8.3f} | {seconds / loop_s:7.3f}x |")
    ratio = ours_s / loop_s
    print(
        f"\ncolorize / loop = {ratio:.3f}x (target <= 0.05x): {'PASS' if ratio <= 0.05 else 'FAIL'}"
    )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
