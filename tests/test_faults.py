"""Faults: training killed with SIGKILL at random points, and models that fail to load.

Kill trials: ``python train/run.py`` (tiny SegFormer, tiny synthetic data, a resume state
every step, an evaluation and possible export every other step) is killed at a random
point after its ``k``-th state (``k`` and the delay drawn from a seeded RNG per trial).
After every kill the output folder must be usable: the exported model loads, no temp
folder passes for a checkpoint, the newest complete state is what ``--resume`` picks up,
and the resumed run finishes with a history that continues where the state left off.

Two more trials kill at the first sign of a save in progress: while the best model is being
exported (``save_checkpoint``'s temp folder exists) and while a resume state is being
written (``state/step-N.tmp`` exists). Both run by default; the random trials are
marked ``slow`` (``SEGDEMO_KILL_TRIALS``, default 4).
With ``SEGDEMO_KILL_LOG=FILE`` each trial appends one JSON line saying where it was killed
and what it left (docs/robustness.md counts them).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from segdemo import models
from segdemo.checkpoint import is_checkpoint, load_checkpoint, save_checkpoint
from segdemo.registry import discover_local
from tests.builders import build_tiny
from tests.synthetic import ID2LABEL, write_folder
from train import outputs

REPO = Path(__file__).resolve().parents[1]
MAX_STEPS = 8
LR = 6e-5
KILL_TRIALS = int(os.environ.get("SEGDEMO_KILL_TRIALS", "4"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    """(tiny model folder, dataset root) shared by every trial."""
    root = tmp_path_factory.mktemp("faults")
    model = build_tiny("segformer", root / "start", id2label=ID2LABEL, image_size=32)
    return model, write_folder(root / "data", n_train=4, n_val=2, size=(32, 40))


def _command(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(REPO / "train" / "run.py"),
        "--model",
        str(model),
        "--data-dir",
        str(data),
        "--output-dir",
        str(out),
        "--max-steps",
        str(MAX_STEPS),
        "--batch-size",
        "2",
        "--crop-size",
        "32",
        "32",
        "--num-workers",
        "0",
        "--save-every",
        "1",
        "--eval-every",
        "2",
        "--log-every",
        "1",
        "--seed",
        "0",
        "--lr",
        str(LR),
        *extra,
    ]


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _latest_step(out: Path) -> int:
    state = outputs.latest_state(out)
    return int(state.name.split("-")[1]) if state is not None else 0


def _random_point(out: Path, rng: random.Random):
    """A kill trigger: a random point of the two steps after state ``k``.

    The time of two steps (one with an evaluation, one without) is measured from state
    ``k-2`` to state ``k``; the kill comes a random fraction of that after state ``k``, so
    it lands in steps ``k+1``/``k+2`` however busy the machine is, each part (forward and
    backward pass, evaluation, export, state save) hit in proportion to its time.
    """
    k, fraction = rng.randint(3, MAX_STEPS - 3), rng.random()
    marks: dict[str, float] = {}

    def trigger() -> bool:
        step, now = _latest_step(out), time.monotonic()
        if step >= k - 2:
            marks.setdefault("before", now)
        if step >= k:
            marks.setdefault("reached", now)
            return now - marks["reached"] >= fraction * (marks["reached"] - marks["before"])
        return False

    return trigger, {"k": k, "fraction": round(fraction, 3)}


def _window(out: Path, window: str):
    """A kill trigger: the first moment a temp folder of ``window`` is seen (polled every ms)."""
    pattern = {"export": (out.parent, f".{out.name}.tmp-*"), "state": (out / "state", "step-*.tmp")}
    folder, glob = pattern[window]
    return (lambda: any(folder.glob(glob))), {"window": window}


def _run_and_kill(command: list[str], trigger) -> bool:
    """Start ``command`` and SIGKILL it as soon as ``trigger()`` is true; False if it finished first."""
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    try:
        while process.poll() is None and not trigger():
            assert time.monotonic() < deadline, "training did not reach the kill point"
            time.sleep(0.001)
        killed = process.poll() is None
        if killed:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return killed


def _check_output_is_usable(out: Path) -> None:
    """What must hold in ``out`` at any instant, however the run stopped."""
    # the exported model (if any yet) loads; a completed export is never missing
    history_file = out / "history.json"
    history = json.loads(history_file.read_text()) if history_file.exists() else {}
    if history.get("best") is not None:
        assert is_checkpoint(out), "history names a best model but no checkpoint is there"
    if is_checkpoint(out):
        load_checkpoint(out)
    # the app's discovery sees at most this run's folder, never a temp sibling
    assert {spec.path for spec in discover_local(out.parent)} <= {out}
    for temp in out.parent.glob(f".{out.name}.*"):
        assert not is_checkpoint(temp)
    # every JSON file under its final name is complete (written to a temp name and renamed)
    for path in [*out.glob("*.json"), *out.glob(f"{outputs.STATE_DIR}/step-*/*.json")]:
        json.loads(path.read_text())
    # the newest complete state is a published one, never a ``.tmp`` being written
    state = outputs.latest_state(out)
    if state is not None:
        assert re.fullmatch(r"step-\d+", state.name)
        assert outputs.read_trainer_state(state)["step"] == _latest_step(out)


# one row per trial: where the kill lands. The two windows (the model the app serves
# being replaced; a resume state being written) run by default; the random points are slow.
TRIALS = [
    pytest.param("export", id="export-window"),  # inside save_checkpoint of the best model
    pytest.param("state", id="state-window"),  # inside save_state
    *(
        pytest.param(seed, id=f"random-{seed}", marks=pytest.mark.slow)
        for seed in range(KILL_TRIALS)
    ),
]


@pytest.mark.parametrize("trial", TRIALS)
def test_killed_training_leaves_a_loadable_output_and_resumes(setup, tmp_path, trial):
    model, data = setup
    out = tmp_path / "run"
    if isinstance(trial, int):
        trigger, where = _random_point(out, random.Random(trial))
    else:
        trigger, where = _window(out, trial)
    killed = _run_and_kill(_command(model, data, out), trigger)
    assert killed, f"the run finished before the kill point {where}"
    left = _leftovers(out)
    if not isinstance(trial, int):  # the kill did land inside the window
        assert left["temp_checkpoint_folders" if trial == "export" else "temp_states"] > 0
    _check_output_is_usable(out)

    state = outputs.latest_state(out)
    resumed_from = outputs.read_trainer_state(state)["step"] if state else 0
    extra = ("--resume", str(state)) if state else ()
    run = subprocess.run(
        _command(model, data, out, *extra),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    if state is not None:
        assert f"resumed from {state} at step {resumed_from}" in run.stdout
    _check_output_is_usable(out)
    assert _latest_step(out) == MAX_STEPS
    assert is_checkpoint(out)
    history = json.loads((out / "history.json").read_text())
    # the resumed run continued the recorded history: every step once, in order
    assert [r["step"] for r in history["train"]] == list(range(1, MAX_STEPS + 1))
    assert [r["step"] for r in history["eval"]] == list(range(2, MAX_STEPS + 1, 2))
    # and continued the run's state, not only its step count: the learning rate follows the
    # schedule across the kill (poly, power 1, no warm-up) and AdamW's step
    # count in the last state is the run's
    lrs = [r["lr"] for r in history["train"]]
    assert lrs == pytest.approx([LR * (1 - s / MAX_STEPS) for s in range(1, MAX_STEPS + 1)])
    optimizer = torch.load(outputs.latest_state(out) / "optimizer.bin", weights_only=True)
    assert {float(s["step"]) for s in optimizer["state"].values()} == {float(MAX_STEPS)}
    if os.environ.get("SEGDEMO_KILL_LOG"):
        with open(os.environ["SEGDEMO_KILL_LOG"], "a", encoding="utf-8") as log:
            log.write(
                json.dumps({"trial": trial, **where, **left, "resumed_from": resumed_from}) + "\n"
            )


def _leftovers(out: Path) -> dict:
    """What a kill left behind, for the log: temp folders and the newest state."""
    return {
        "exported": is_checkpoint(out),
        "latest_state": _latest_step(out),
        "temp_checkpoint_folders": len(list(out.parent.glob(f".{out.name}.*"))),
        "temp_states": len(list((out / outputs.STATE_DIR).glob("step-*.tmp"))),
    }


# --------------------------------------------------------------------------- broken models


def _drop_weights(folder: Path) -> None:
    (folder / "model.safetensors").unlink()


def _truncate_weights(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def _garbage_weights(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"\x00" * 4096)


def _unsupported_architecture(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"model_type": "bert"}))


# one row per broken folder: how to break it, and what the one-line message says. The
# folder is named by path (operator mode, SEGDEMO_ALLOW_ANY_MODEL=1) so every row reaches
# the loader; a broken folder in the checkpoints dir is simply not offered (last test).
BROKEN_MODELS = [
    ("missing-weights", _drop_weights, "no weights (model.safetensors) found"),
    ("truncated-safetensors", _truncate_weights, "model.safetensors is corrupt or truncated"),
    ("garbage-safetensors", _garbage_weights, "model.safetensors is corrupt or truncated"),
    ("unsupported-architecture", _unsupported_architecture, "unsupported architecture 'bert'"),
]


@pytest.fixture(scope="module")
def good_model(tmp_path_factory) -> Path:
    return build_tiny("segformer", tmp_path_factory.mktemp("good-model") / "good")


@pytest.fixture()
def cache_env(tmp_path, monkeypatch, good_model):
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(good_model, checkpoints / "good")
    monkeypatch.setenv("SEGDEMO_CHECKPOINTS", str(checkpoints))
    monkeypatch.setenv("SEGDEMO_ALLOW_ANY_MODEL", "1")
    monkeypatch.setenv("SEGDEMO_MODEL_CACHE", "2")
    models.clear_cache()
    yield checkpoints
    models.clear_cache()


@pytest.mark.parametrize("row, breaker, words", BROKEN_MODELS, ids=[r[0] for r in BROKEN_MODELS])
def test_a_model_that_fails_to_load_does_not_poison_the_cache(
    cache_env, good_model, tmp_path, row, breaker, words
):
    broken = tmp_path / "elsewhere" / "broken"
    shutil.copytree(good_model, broken)
    breaker(broken)
    models.load_model("local/good")
    messages = []
    for _ in range(2):  # retried: the same clear error, not a cached half-loaded model
        with pytest.raises((models.ModelLoadError, models.ModelNotAllowedError)) as info:
            models.load_model(str(broken), allow_any=True)
        messages.append(str(info.value))
        assert models.cached_model_ids() == ["local/good"]
    assert messages[0] == messages[1]
    assert words in messages[0] and str(broken) in messages[0] and "\n" not in messages[0]
    # the good model is still served from the cache, and another load works
    assert models.load_model("local/good") is models.load_model("local/good")
    # repaired in place, the same id loads: failures are not remembered
    shutil.rmtree(broken)
    shutil.copytree(good_model, broken)
    assert models.load_model(str(broken), allow_any=True).model_type == "segformer"


@pytest.mark.parametrize("row, breaker, words", BROKEN_MODELS, ids=[r[0] for r in BROKEN_MODELS])
def test_the_cli_reports_a_broken_model_in_one_line(
    cache_env, good_model, tmp_path, capsys, row, breaker, words
):
    from PIL import Image

    from segdemo.__main__ import main

    broken = tmp_path / "broken"
    shutil.copytree(good_model, broken)
    breaker(broken)
    image = tmp_path / "a.png"
    Image.new("RGB", (40, 30), (90, 120, 30)).save(image)
    code = main(
        [
            "predict",
            str(image),
            "--model",
            str(broken),
            "--task",
            "semantic",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and words in err


def test_a_broken_folder_among_the_checkpoints_is_not_offered(cache_env, good_model, monkeypatch):
    """Discovery skips what cannot load; picking it anyway gets the registry's refusal."""
    monkeypatch.delenv("SEGDEMO_ALLOW_ANY_MODEL")
    for name, breaker, _ in BROKEN_MODELS:
        shutil.copytree(good_model, cache_env / name)
        breaker(cache_env / name)
    offered = {spec.id for spec in discover_local()}
    # truncated/garbage weights are only found out when loading: offered, then refused there
    assert offered == {"local/good", "local/truncated-safetensors", "local/garbage-safetensors"}
    with pytest.raises(models.ModelNotAllowedError, match="not offered here"):
        models.load_model("local/unsupported-architecture")
    with pytest.raises(models.ModelLoadError, match="corrupt or truncated"):
        models.load_model("local/garbage-safetensors")
    assert models.load_model("local/good").model_type == "segformer"


# --------------------------------------------------------------------------- checkpoint swap

SWAP_KILLER = """
import os, signal, sys
from segdemo import checkpoint

model, processor = checkpoint.load_checkpoint(sys.argv[1])
checkpoint._exchange = lambda a, b: False  # a system without renameat2: the two-rename swap
real_replace = os.replace


def replace(source, target):
    real_replace(source, target)
    if ".old-" in os.fspath(target):  # the previous checkpoint is moved aside: die now
        os.kill(os.getpid(), signal.SIGKILL)


os.replace = replace
checkpoint.save_checkpoint(sys.argv[2], model, processor)
"""


class _FailingProcessor:
    def save_pretrained(self, folder):
        raise OSError("disk full")


def test_a_checkpoint_moved_aside_by_a_killed_swap_is_restored(good_model, tmp_path):
    """Without an atomic exchange, save_checkpoint renames the old folder to
    ``.NAME.old-PID-*`` and then the new one to ``NAME``; a kill between the two renames
    leaves no ``NAME``. The next save puts the moved-aside checkpoint back before anything
    else, so even a save that then fails leaves the previous model in place."""
    model, processor = load_checkpoint(good_model)
    out = save_checkpoint(tmp_path / "best", model, processor, {"step.txt": "1"})
    killed = subprocess.run(
        [sys.executable, "-c", SWAP_KILLER, str(good_model), str(out)],
        cwd=REPO,
        env=dict(_env(), PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (aside,) = tmp_path.glob(".best.old-*")
    assert not out.exists() and (aside / "step.txt").read_text() == "1"
    assert discover_local(tmp_path) == []  # hidden and temp-named: never offered

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(out, model, _FailingProcessor())
    assert (out / "step.txt").read_text() == "1"  # the previous checkpoint, restored
    load_checkpoint(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # the dead temps are gone
    save_checkpoint(out, model, processor, {"step.txt": "2"})
    assert (out / "step.txt").read_text() == "2"
