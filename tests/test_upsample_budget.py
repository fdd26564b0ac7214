"""segdemo.upsample keeps its memory budget: measured, not assumed.

``upsample_argmax`` promises that the ``C x H x W`` upsampled logits never exist and that
its temporary blocks (pixel/candidate pairs on the fast path, groups of upsampled classes
on the fallback) stay within ``budget_bytes``. The equality tests in test_segment.py pass
whatever memory a block takes, so this file measures it: a fresh Python process runs one
call and reports its peak resident memory (``VmHWM`` after resetting it through
``/proc/self/clear_refs``), with glibc told to serve every allocation of 64 KiB or more
by ``mmap`` (``MALLOC_MMAP_THRESHOLD_``) so that freed blocks leave the resident set at
once and the peak is that of live memory.

The peak of a large output may exceed that of a tiny one by the output-sized arrays (the
label map and its index maps, ``per_pixel`` bytes per output pixel) plus two blocks;
a block sized by the whole image instead of the budget (150 classes of 1.5 MP floats:
hundreds of MB) does not fit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

MEASURE = r"""
import json, math, sys
import torch
from segdemo.upsample import upsample_argmax

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024

def peak_growth(logits, size, budget):
    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    upsample_argmax(logits, size, budget_bytes=budget)
    return status("VmHWM") - before

low_h, low_w, height, width, budget, nan = (int(v) for v in sys.argv[1:])
torch.set_num_threads(1)
logits = 0.03 * torch.randn(150, low_h, low_w, generator=torch.Generator().manual_seed(8))
if nan:  # non-finite scores take the fallback: every class through F.interpolate
    logits[0, 0, 0] = math.nan
upsample_argmax(logits, (low_h + 1, low_w + 1))  # one-time costs of the first call
print(json.dumps({
    "small": peak_growth(logits, (2 * low_h, 2 * low_w), budget),
    "large": peak_growth(logits, (height, width), budget),
}))
"""

MB = 2**20
# (case, low-res logits h x w, output H x W, budget, NaN?, bytes per output pixel allowed)
CASES = [
    # the fast path, taken on CPU when upsampling: label map (4 B/px) and index maps (8 B/px)
    ("fast path", (32, 43), (1000, 1500), 4 * MB, False, 16),
    # the fallback: running max and argmax, candidate values/indices and a mask (~33 B/px)
    ("fallback", (32, 43), (600, 800), 8 * MB, True, 40),
]


@pytest.mark.skipif(
    not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc peak RSS reset"
)
@pytest.mark.parametrize(
    "case, low, size, budget, nan, per_pixel", CASES, ids=[row[0] for row in CASES]
)
def test_blocks_stay_within_the_budget(case, low, size, budget, nan, per_pixel):
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, *map(str, (*low, *size, budget, int(nan)))],
        cwd=REPO,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": "1",
            "MALLOC_MMAP_THRESHOLD_": str(64 * 1024),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    peaks = json.loads(done.stdout)
    allowed = peaks["small"] + per_pixel * size[0] * size[1] + 2 * budget
    full = 150 * size[0] * size[1] * 4  # the upsampled logits that must never exist
    assert peaks["large"] <= allowed, (
        f"{case}: peak {peaks['large'] / MB:.0f} MB > allowed {allowed / MB:.0f} MB "
        f"(budget {budget / MB:.0f} MB; the full upsampled logits: {full / MB:.0f} MB)"
    )
