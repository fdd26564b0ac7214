"""Training step time with ``--channels-last`` against the default memory order.

    OMP_NUM_THREADS=1 nice python bench/bench_channels_last.py
    OMP_NUM_THREADS=1 nice python bench/bench_channels_last.py --preset mask2former-resnet-s

Two copies of one random-init preset (real size), one in channels-last order (weights and
inputs, as ``train/run.py --channels-last`` runs it), take optimizer steps on the same
batch in alternation (ABAB..., so a busy machine slows both alike). Before timing, their
first forward passes are asserted equal to float rounding. Prints the median CPU seconds
per step of this process (wall time on a shared machine mostly measures the queue for a
core) and the ratio default / channels-last.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segdemo.presets import build_preset  # noqa: E402
from train.memory_format import channels_last_batch, use_channels_last  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="upernet-resnet-s")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--size", type=int, nargs=2, default=(192, 256), metavar=("H", "W"))
    p.add_argument("--steps", type=int, default=8, help="timed steps per side")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast (default: bf16)")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    id2label = {i: f"class{i}" for i in range(11)}
    default, _ = build_preset(args.preset, id2label, tuple(args.size))
    nhwc = copy.deepcopy(default)
    use_channels_last(nhwc)
    models = {"default": default, "channels-last": nhwc}
    optimizers = {k: torch.optim.AdamW(m.parameters(), 1e-4) for k, m in models.items()}
    batch = _batch(args.preset, args.batch_size, tuple(args.size))
    batches = {"default": batch, "channels-last": channels_last_batch(batch)}

    first = {}
    with torch.no_grad():
        for name, model in models.items():
            torch.manual_seed(1)  # Mask2Former's loss samples random points
            first[name] = model(**batches[name]).loss.item()
    assert abs(first["default"] - first["channels-last"]) <= 1e-4 * abs(first["default"]), first

    def step(name: str) -> float:
        started = time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not args.fp32):
            loss = models[name](**batches[name]).loss
        loss.backward()
        optimizers[name].step()
        optimizers[name].zero_grad()
        return time.process_time() - started

    for name in models:  # warm-up: oneDNN picks and caches its kernels
        step(name), step(name)
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for i in range(args.steps):
        for name in list(models)[:: 1 if i % 2 == 0 else -1]:
            seconds[name].append(step(name))
    median = {name: statistics.median(s) for name, s in seconds.items()}
    report = {
        "preset": args.preset,
        "batch": args.batch_size,
        "size": list(args.size),
        "bf16": not args.fp32,
        "threads": torch.get_num_threads(),
        "first_loss": first,
        "cpu_s_per_step": median,
        "speedup": median["default"] / median["channels-last"],
    }
    print(
        f"{args.preset} batch {args.batch_size} at {args.size[0]}x{args.size[1]}, "
        f"{'fp32' if args.fp32 else 'bf16'}, {torch.get_num_threads()} thread(s): "
        f"default {median['default']:.3f} s, channels-last {median['channels-last']:.3f} s "
        f"of CPU per step: {report['speedup']:.2f}x"
    )
    return report


def _batch(preset: str, batch_size: int, size: tuple[int, int]) -> dict:
    """Random pixels and labels of the preset's task (seeded)."""
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch_size, 3, *size, generator=g)
    if preset.startswith("mask2former"):
        masks = [(torch.rand(5, *size, generator=g) > 0.5).float() for _ in range(batch_size)]
        classes = [torch.randint(0, 11, (5,), generator=g) for _ in range(batch_size)]
        return {"pixel_values": pixels, "mask_labels": masks, "class_labels": classes}
    return {
        "pixel_values": pixels,
        "labels": torch.randint(0, 11, (batch_size, *size), generator=g),
    }


if __name__ == "__main__":
    main()
