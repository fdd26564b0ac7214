"""bench/bench_train_universal.py at a toy size: both sides train, the table and ratios print.

Synthetic COCO panoptic data (tests/synthetic_panoptic.py), 64x64, batch 2, one timed step
after one warm-up step, one round; the numbers are not checked, only that the benchmark
runs end to end and that both pipelines build the same targets.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_toy_benchmark_prints_a_ratio(tmp_path):
    command = [sys.executable, str(ROOT / "bench" / "bench_train_universal.py"), "--synthetic"]
    command += ["--size", "64", "64", "--batch-size", "2", "--steps", "1", "--warmup", "1"]
    command += ["--rounds", "1", "--work", str(tmp_path / "work")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    # the targets of un-augmented images agree between the example's recipe and ours
    assert "4/4 images with the same segments and classes, 100.00% of mask pixels equal" in out
    assert re.search(r"ratio ours/baseline, images_per_s: \d+\.\d\dx", out), out
    assert re.search(r"ratio ours/baseline, images_per_cpu_s: \d+\.\d\dx", out), out
    for side in ("ours", "baseline"):  # both sides trained a step on binary float masks
        assert re.search(rf'step 1, {side}: loss \d+\.\d+, .*"mask_values": \[0\.0, 1\.0\]', out)
