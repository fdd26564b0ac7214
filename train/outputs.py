"""What train/run.py leaves on disk besides the model: resume states, history, charts.

Layout of ``OUTPUT`` (the folder is itself the exported HF checkpoint the app serves)::

    config.json, model.safetensors, preprocessor_config.json   best-val-mIoU model
    segdemo.json            palette and title for the app's model list
    training_config.json    the arguments and derived numbers of the run
    eval_results.json       metrics of the exported model (per class by name)
    per_class_iou.png       bar chart of those per-class IoUs
    history.json            train loss and val metrics over steps (every evaluation)
    curves.png              loss and val mIoU over steps
    state/step-N/           accelerate resume states (newest ``--save-total-limit`` kept)

Every file is written to a temp name and renamed, and a state folder is written as
``step-N.tmp`` and renamed to ``step-N`` only once complete (``trainer_state.json``
inside it is the last file written), so a killed run never leaves a half-written file
or state that a later run would take as valid.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

STATE_DIR = "state"
TRAINER_STATE = "trainer_state.json"
KEEP = (STATE_DIR, "history.json", "curves.png")
METRIC_TITLES = {"mean_iou": "mIoU", "pq": "PQ", "ap": "mask AP"}
"""Entries of OUTPUT that survive a model export (see ``save_checkpoint(keep=...)``)."""
_STEP = re.compile(r"^step-(\d+)$")


# --------------------------------------------------------------------------- resume states


def state_path(output_dir: Path, step: int) -> Path:
    return output_dir / STATE_DIR / f"step-{step}"


def temp_state_path(output_dir: Path, step: int) -> Path:
    """Where all processes write a state before the main process publishes it."""
    return output_dir / STATE_DIR / f"step-{step}.tmp"


def latest_state(output_dir: Path) -> Path | None:
    """The newest complete state folder (``state/step-N`` holding ``trainer_state.json``)."""
    root = output_dir / STATE_DIR
    if not root.is_dir():
        return None
    complete = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _STEP.match(p.name)) and (p / TRAINER_STATE).is_file()
    ]
    return max(complete)[1] if complete else None


def publish_state(output_dir: Path, step: int, trainer_state: dict, keep_last: int) -> Path:
    """Main process: finish ``step-N.tmp`` (write ``trainer_state.json``), rename it to
    ``step-N`` and delete older states beyond ``keep_last`` and leftover temps."""
    tmp, final = temp_state_path(output_dir, step), state_path(output_dir, step)
    write_json(tmp / TRAINER_STATE, trainer_state)
    if final.exists():  # the same step saved again (e.g. a resumed run that had nothing left)
        shutil.rmtree(final)
    os.replace(tmp, final)
    steps = sorted(
        (int(m.group(1)), p)
        for p in final.parent.iterdir()
        if (m := _STEP.match(p.name)) and p != final
    )
    for _, old in steps[: max(0, len(steps) + 1 - keep_last)]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in final.parent.glob("step-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def read_trainer_state(state_dir: Path) -> dict:
    return json.loads((state_dir / TRAINER_STATE).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- files


def clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become ``None``, numpy scalars and arrays become Python."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if hasattr(value, "tolist"):
        return clean(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data: Any) -> None:
    write_bytes(path, json.dumps(clean(data), indent=2).encode("utf-8"))


def write_bytes(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(content)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- charts


def curves_png(history: dict) -> bytes:
    """PNG: train loss (left) and the val metric (right; ``history["metric"]``, default
    ``mean_iou``) over optimizer steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    train = history.get("train", [])
    left.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue")
    left.set(xlabel="step", ylabel="train loss", title="Training loss")
    evals = history.get("eval", [])
    metric = history.get("metric", "mean_iou")
    title = METRIC_TITLES.get(metric, metric)
    right.plot([r["step"] for r in evals], [r[metric] for r in evals], "o-", color="tab:green")
    right.set(xlabel="step", ylabel=f"val {title}", title=f"Validation {title}", ylim=(0, 1))
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return _png(fig)


def per_class_png(per_class_iou: dict[str, float | None], title: str, xlabel: str = "IoU") -> bytes:
    """PNG: horizontal bars of a metric per class (classes absent from val shown as 'n/a')."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(per_class_iou)
    values = [v if v is not None else 0.0 for v in per_class_iou.values()]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(names) + 1.2))
    bars = ax.barh(names, values, color="tab:green")
    for bar, value in zip(bars, per_class_iou.values(), strict=True):
        text = "n/a" if value is None else f"{value:.2f}"
        ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2, text, va="center")
    ax.invert_yaxis()
    ax.set(xlim=(0, 1.1), xlabel=xlabel, title=title)
    return _png(fig)


def _png(fig: Any) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
