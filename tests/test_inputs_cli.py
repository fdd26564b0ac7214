"""Bad and odd images through ``python -m segdemo predict`` (the table is tests/inputs.py).

An unusable file: exit code 1, exactly one ``error: NAME: ...`` line on stderr naming it,
no traceback, and the next invocation works. A valid but unusual file: exit code 0, and
the written outputs show it decoded right (orientation, alpha on white, 16-bit range...).
The model is a one-class tiny SegFormer: its label map is uniform, so with ``--alpha 0``
the overlay shows the decoded picture itself except for the class label in the middle.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdemo import models
from segdemo.__main__ import main
from tests.builders import build_tiny
from tests.inputs import (
    CASES,
    ERROR_CASES,
    SMALL_MAX_PIXELS,
    VALID_CASES,
    check_valid,
    gradient,
    real_bomb_png,
    write_case,
)

REPO = Path(__file__).resolve().parents[1]
MODEL = "local/one-class"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-inputs-ckpt")
    build_tiny("segformer", root / "one-class", id2label={0: "scene"})
    return root


@pytest.fixture(scope="module", autouse=True)
def _fresh_model_cache():
    # one load for the module: the cache staying warm across bad inputs is part of the test
    models.clear_cache()
    yield
    models.clear_cache()


@pytest.fixture()
def env(tmp_path, monkeypatch, checkpoints):
    monkeypatch.setenv("SEGDEMO_CHECKPOINTS", str(checkpoints))
    monkeypatch.setenv("SEGDEMO_MAX_PIXELS", str(SMALL_MAX_PIXELS))
    good = tmp_path / "in" / "good.png"
    good.parent.mkdir()
    Image.fromarray(gradient()).save(good)
    return tmp_path, good


def _predict(paths, out: Path) -> int:
    args = ["predict", *map(str, paths), "--model", MODEL, "--task", "semantic"]
    return main([*args, "--alpha", "0", "--out", str(out)])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_each_input_is_refused_in_one_line_or_decoded_right(env, capsys, case):
    tmp_path, good = env
    path = write_case(tmp_path / "in", case)
    code = _predict([path], tmp_path / "out")
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if case.expect == "error":
        assert code == 1
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {case.name}: "), err
        assert case.words in lines[0]
        assert not list((tmp_path / "out").glob(f"{path.stem}_*"))  # nothing half-written
    else:
        assert code == 0, err
        labels = Image.open(tmp_path / "out" / f"{path.stem}_labels.png")
        assert labels.size == case.size  # e.g. EXIF-rotated: the portrait size
        overlay = np.asarray(Image.open(tmp_path / "out" / f"{path.stem}_overlay.png"))
        width, height = case.size
        if case.probe_overlay:
            check_valid(case, overlay[:height, :width].copy())
    # the next invocation in the same process (model cache and all) works
    assert _predict([good], tmp_path / "out-next") == 0
    assert (tmp_path / "out-next" / "good_overlay.png").is_file()


def test_a_real_decompression_bomb_is_refused_before_decoding(env, capsys, monkeypatch):
    """8000x8000 declared in an 8 KB PNG, against the default 50 MP cap (no env override)."""
    tmp_path, good = env
    monkeypatch.delenv("SEGDEMO_MAX_PIXELS")
    bomb = tmp_path / "in" / "bomb.png"
    bomb.write_bytes(real_bomb_png(8000, 8000))
    code = _predict([bomb, good], tmp_path / "out")
    err = capsys.readouterr().err
    assert code == 1 and err.strip().splitlines() == [
        "error: bomb.png: the image is too large (over 50,000,000 pixels); "
        "resize it below that and try again"
    ]
    assert (tmp_path / "out" / "good_overlay.png").is_file()  # the rest still processed


def test_real_entry_point_reports_every_bad_file_and_processes_the_rest(env):
    """``python -m segdemo predict`` in a subprocess with the whole table at once."""
    tmp_path, good = env
    paths = [write_case(tmp_path / "in", case) for case in CASES] + [good]
    run = subprocess.run(
        [sys.executable, "-m", "segdemo", "predict", *map(str, paths)]
        + ["--model", MODEL, "--task", "semantic", "--out", str(tmp_path / "out")],
        cwd=REPO,
        env=dict(os.environ),  # SEGDEMO_* set by the fixture
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert [line.split(":")[1].strip() for line in errors] == [c.name for c in ERROR_CASES]
    for case in VALID_CASES:
        assert (tmp_path / "out" / f"{Path(case.name).stem}_segments.json").is_file(), case.id
    assert (tmp_path / "out" / "good_overlay.png").is_file()
