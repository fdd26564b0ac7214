"""``accelerate launch`` with 2 gloo processes on CPU: ``predict`` and ``evaluate --model``
split the images and give exactly what one process gives.

Each test launches once (~30 s on a busy 2-core machine) and compares with the same
command run in this process.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from builders import build_tiny
from PIL import Image
from synthetic import ID2LABEL, write_folder
from test_evaluate_universal import write_panoptic_folder

from segdemo import models
from segdemo.__main__ import main

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(*command: str, timeout: int = 400) -> subprocess.CompletedProcess:
    """``accelerate launch --multi_gpu --num_processes 2`` of ``command`` (gloo on CPU)."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    launcher += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    launcher += ["--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [*launcher, *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture(autouse=True)
def fresh_models():
    models.clear_cache()
    yield
    models.clear_cache()


# --------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder tree of 7 images of 3 sizes (two named a.png), a broken JPEG, a text file,
    a link to itself and a link back up the tree."""
    root = tmp_path_factory.mktemp("photos") / "in"
    rng = np.random.default_rng(0)
    sizes = {
        "a.png": (40, 60),
        "b.jpg": (30, 50),
        "c.png": (40, 60),
        "sub/a.png": (40, 60),
        "sub/d.png": (64, 64),
        "sub/deeper/e.png": (50, 40),
        "zz/f.png": (40, 60),
    }
    for name, (h, w) in sizes.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / name)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    (root / "self.png").symlink_to("self.png")
    (root / "sub" / "deeper" / "up").symlink_to("..")
    model = build_tiny("segformer", tmp_path_factory.mktemp("seg") / "seg")
    return root, model, sorted(sizes)


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_two_processes_predict_each_image_once_with_the_one_process_files(photos, tmp_path, capsys):
    root, model, names = photos
    common = ["--recursive", "--model", str(model), "--task", "semantic"]
    one = tmp_path / "one"
    assert main(["predict", str(root), *common, "--out", str(one)]) == 1  # bad files: exit 1
    single_errors = [e for e in capsys.readouterr().err.splitlines() if e.startswith("error: ")]

    two = tmp_path / "two"
    done = launch(
        "-m", "segdemo", "predict", str(root), *common, "--batch-size", "2", "--out", str(two)
    )
    assert done.returncode == 1, done.stderr[-3000:]
    # every image exactly once, by one of the two processes
    written = sorted(re.findall(r"^(\S+): \d+ segments -> ", done.stdout, re.M))
    assert written == [str(root / name) for name in names], (done.stdout, done.stderr[-3000:])
    # byte-identical label maps, segment lists and overlays, at the relative paths
    files = _files(two)
    assert files == _files(one)
    assert "a_labels.png" in files and "sub/a_labels.png" in files  # the two a.png
    assert len(files) == 3 * len(names)
    # each bad input reported once, in one line, as one process reports it
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert sorted(errors) == sorted(single_errors)
    assert [e.split(": ")[1] for e in sorted(errors)] == [
        str(root / name) for name in ("broken.jpg", "self.png", "sub/deeper/up")
    ]
    summary = [line for line in done.stderr.splitlines() if line.startswith("predict: ")]
    assert summary == [
        "predict: 7 written, 3 failed, 1 file in the folders not images by name, left out, "
        "2 processes"
    ]


# --------------------------------------------------------------------------- evaluate

EVALUATE_SCRIPT = """
import json, os, sys
from segdemo.__main__ import main

codes = [main(argv) for argv in json.loads(sys.argv[1])]
if os.environ.get("RANK", "0") == "0":
    open(sys.argv[2], "w").write(json.dumps(codes))
"""


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """5 val images per task (3 + 2 between two processes) and a tiny model for each."""
    root = tmp_path_factory.mktemp("eval")
    semantic = write_folder(root / "shapes", n_train=1, n_val=5)
    broken = write_folder(root / "broken", n_train=1, n_val=5)
    # the last image: the second process's share; an annotation that is no PNG
    (broken / "val" / "annotations" / "val_004.png").write_bytes(b"not a png")
    coco = root / "coco"
    write_panoptic_folder(coco, counts=(("train", 1), ("val", 5)))
    return {
        "semantic": semantic,
        "broken": broken,
        "coco": coco,
        "seg": build_tiny("segformer", root / "seg", id2label=ID2LABEL),
        "m2f": build_tiny("mask2former", root / "m2f"),
        "things": build_tiny("mask2former", root / "things", id2label={0: "car", 1: "person"}),
    }


def _evaluations(d: dict, out: Path) -> list[list[str]]:
    post = ["--threshold", "0.3", "--mask-threshold", "0.4"]
    return [
        ["--model", d["seg"], "--data-dir", d["semantic"], "--out", out / "semantic.json"],
        ["--task", "panoptic", "--model", d["m2f"], "--data-dir", d["coco"], *post]
        + ["--out", out / "panoptic.json"],
        ["--task", "instance", "--model", d["things"], "--data-dir", d["coco"], *post]
        + ["--out", out / "instance.json"],
        ["--model", d["seg"], "--data-dir", d["broken"], "--out", out / "broken.json"],
    ]


def test_two_processes_evaluate_equals_one_process(datasets, tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    runs = {
        out: [["evaluate", *map(str, argv)] for argv in _evaluations(datasets, out)]
        for out in (one, two)
    }
    codes = [main(argv) for argv in runs[one]]
    single_err = capsys.readouterr().err
    assert codes == [0, 0, 0, 2], single_err

    script, codes_file = tmp_path / "evaluate_all.py", tmp_path / "codes.json"
    script.write_text(EVALUATE_SCRIPT)
    done = launch(str(script), json.dumps(runs[two]), str(codes_file))
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(codes_file.read_text()) == [0, 0, 0, 2]
    for name in ("semantic", "panoptic", "instance"):
        report = json.loads((two / f"{name}.json").read_text())
        # the statistics of both processes, counted once: the one-process report exactly
        assert report["evaluation"]["num_images"] == 5
        assert report == json.loads((one / f"{name}.json").read_text())
    # something was found to count: not an all-empty report that would match trivially
    panoptic = json.loads((two / "panoptic.json").read_text())
    assert sum(r["tp"] + r["fp"] for r in panoptic["per_category"].values()) > 0
    assert json.loads((two / "semantic.json").read_text())["mean_iou"] > 0
    # the bad annotation on the second process's share: one line from the main process,
    # the same as one process prints, and no report
    error = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert error == [line for line in single_err.splitlines() if line.startswith("error: ")]
    assert "val_004.png" in error[0]
    assert not (two / "broken.json").exists()
