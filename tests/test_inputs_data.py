"""Broken datasets at the two data entrances: ``python train/run.py`` and ``python -m segdemo evaluate``.

Every broken dataset stops the command before any training step or model output, with one
line naming the file at fault; the unbroken dataset runs. The train/run.py rows really run
``python train/run.py`` (all at once, as subprocesses, to keep the wall time short). The odd
image files of tests/inputs.py go through the dataset reader too: unusable ones are named,
valid ones decode as in the app.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdemo import data, models
from segdemo.__main__ import main
from segdemo.checkpoint import is_checkpoint
from tests.builders import build_tiny
from tests.inputs import CASES, SMALL_MAX_PIXELS, check_valid, write_case
from tests.synthetic import ID2LABEL, write_folder

REPO = Path(__file__).resolve().parents[1]
NUM_LABELS = len(ID2LABEL)


# --------------------------------------------------------------------------- breakers
# each takes (dataset root, split) and returns the path (relative to root) the message must name


def _drop_annotation(root: Path, split: str) -> str:
    (root / split / "annotations" / f"{split}_001.png").unlink()
    return f"{split}/images/{split}_001.png"


def _drop_image(root: Path, split: str) -> str:
    (root / split / "images" / f"{split}_001.png").unlink()
    return f"{split}/annotations/{split}_001.png"


def _resize_annotation(root: Path, split: str) -> str:
    path = root / split / "annotations" / f"{split}_001.png"
    Image.open(path).resize((40, 30), Image.Resampling.NEAREST).save(path)
    return f"{split}/images/{split}_001.png"


def _label_out_of_range(root: Path, split: str) -> str:
    path = root / split / "annotations" / f"{split}_001.png"
    labels = np.asarray(Image.open(path)).copy()
    labels[:2, :2] = 7  # 3 classes; 7 is neither a class nor the ignore index 255
    Image.fromarray(labels).save(path)
    return f"{split}/images/{split}_001.png"


def _empty_split(root: Path, split: str) -> str:
    for kind in ("images", "annotations"):
        shutil.rmtree(root / split / kind)
        (root / split / kind).mkdir()
    return split


def _id2label(text: str):
    def breaker(root: Path, split: str) -> str:
        (root / "id2label.json").write_text(text)
        return "id2label.json"

    return breaker


def _no_id2label(root: Path, split: str) -> str:
    (root / "id2label.json").unlink()
    return "id2label.json"


def _truncated_image(root: Path, split: str) -> str:
    (root / split / "images" / f"{split}_001.png").unlink()
    case = next(c for c in CASES if c.id == "truncated-jpeg")
    (root / split / "images" / f"{split}_001.jpg").write_bytes(case.make())
    return f"{split}/images/{split}_001.jpg"


def _annotation_not_an_image(root: Path, split: str) -> str:
    (root / split / "annotations" / f"{split}_001.png").write_bytes(b"not a png at all")
    return f"{split}/annotations/{split}_001.png"


def _colour_annotation(root: Path, split: str) -> str:
    path = root / split / "annotations" / f"{split}_001.png"
    labels = np.asarray(Image.open(path))
    Image.fromarray(np.stack([labels * 80, labels * 20, labels], -1).astype(np.uint8)).save(path)
    return f"{split}/annotations/{split}_001.png"


# one row per broken dataset: breaker, words the one-line message must contain
DATASETS = [
    # the list
    ("image-without-annotation", _drop_annotation, "has no annotation"),
    ("annotation-without-image", _drop_image, "has no image"),
    ("size-mismatch", _resize_annotation, "annotations must have the image's size"),
    ("label-out-of-range", _label_out_of_range, "label value 7 is not a class id 0..2"),
    ("empty-split", _empty_split, "no image"),
    ("id2label-not-json", _id2label('{0: "background"'), "not valid JSON"),
    # more ways id2label.json goes wrong
    ("id2label-gap", _id2label('{"0": "a", "2": "b"}'), "without gaps"),
    ("id2label-list", _id2label('["a", "b", "c"]'), "expected a non-empty object"),
    ("id2label-names", _id2label('{"sky": 0, "road": 1}'), "integer class ids"),
    ("id2label-missing", _no_id2label, "not found"),
    # broken files inside an otherwise fine dataset
    ("truncated-image", _truncated_image, "damaged or truncated"),
    ("annotation-not-an-image", _annotation_not_an_image, "cannot read the annotation"),
    ("colour-annotation", _colour_annotation, "colour-coded"),
]
# rows that also run as a real `python train/run.py` subprocess (each costs seconds of imports)
SUBPROCESS_ROWS = {"size-mismatch", "id2label-not-json"}


def _dataset(root: Path) -> Path:
    return write_folder(root, n_train=4, n_val=2, size=(32, 40))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny(
        "segformer",
        tmp_path_factory.mktemp("data-model") / "shapes",
        id2label=ID2LABEL,
        image_size=32,
    )


def _train_command(model: Path, root: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        str(REPO / "train" / "run.py"),
        "--model",
        str(model),
        "--data-dir",
        str(root),
        "--output-dir",
        str(out),
        "--max-steps",
        "1",
        "--batch-size",
        "2",
        "--crop-size",
        "32",
        "32",
        "--num-workers",
        "0",
    ]


@pytest.fixture(scope="module")
def train_runs(
    tmp_path_factory, tiny_model
) -> dict[str, tuple[Path, str, subprocess.CompletedProcess]]:
    """``{row id: (dataset root, named path, output dir, finished process)}`` for
    SUBPROCESS_ROWS, all started at once."""
    base = tmp_path_factory.mktemp("train-inputs")
    rows = [(row, breaker) for row, breaker, _ in DATASETS if row in SUBPROCESS_ROWS]
    started = {}
    for row, breaker in rows:
        root = _dataset(base / row / "data")
        named = breaker(root, "train")
        out = base / row / "out"
        started[row] = (
            root,
            named,
            out,
            subprocess.Popen(
                _train_command(tiny_model, root, out),
                cwd=REPO,
                env=dict(os.environ, OMP_NUM_THREADS="1"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
    finished = {}
    for row, (root, named, out, process) in started.items():
        stdout, stderr = process.communicate(timeout=300)
        finished[row] = (
            root,
            named,
            out,
            subprocess.CompletedProcess([], process.returncode, stdout, stderr),
        )
    return finished


@pytest.mark.parametrize(
    "row, words",
    [(row, words) for row, _, words in DATASETS if row in SUBPROCESS_ROWS],
)
def test_train_run_stops_before_training_naming_the_file(train_runs, row, words):
    root, named, out, run = train_runs[row]
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("dataset error: ") and str(root / named) in lines[0]
    assert words in lines[0]
    # stopped before the first step: no model was exported, no resume state written
    assert not is_checkpoint(out) and not (out / "state").exists()


def test_the_intact_dataset_passes_the_same_checks(tmp_path):
    """The control for both tables: the unbroken dataset passes what the broken ones fail.
    (tests/test_faults.py trains on it through train/run.py.)"""
    splits = data.load_folder(_dataset(tmp_path / "data"))
    for split, source in (("train", splits.train), ("val", splits.val)):
        counts = data.validate(source, len(splits.id2label), split=split)
        assert counts.sum() > 0 and counts.shape == (NUM_LABELS,)


@pytest.mark.parametrize("row, breaker, words", DATASETS, ids=[row[0] for row in DATASETS])
def test_train_main_stops_before_training_naming_the_file(
    tmp_path, tiny_model, row, breaker, words
):
    """train/run.py's main() in this process: the same exit message for every row."""
    from train import run

    root = _dataset(tmp_path / "data")
    named = breaker(root, "train")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        run.main(_train_command(tiny_model, root, out)[2:])
    message = str(info.value.code)
    assert message.startswith("dataset error: ") and "\n" not in message
    assert words in message and str(root / named) in message
    assert not out.exists()  # not even the run's config: nothing ran


@pytest.fixture()
def evaluate_env(monkeypatch, tiny_model):
    monkeypatch.setenv("SEGDEMO_CHECKPOINTS", str(tiny_model.parent))
    models.clear_cache()
    yield
    models.clear_cache()


# evaluate reads only the val split; empty val is "no pairs" in evaluate's words
EVALUATE_WORDS = {"empty-split": "no images/annotations pairs"}
EVALUATE_ROWS = [pytest.param(*row, id=row[0]) for row in DATASETS]


@pytest.mark.parametrize("row, breaker, words", EVALUATE_ROWS)
def test_evaluate_cli_names_the_file(tmp_path, capsys, evaluate_env, row, breaker, words):
    root = _dataset(tmp_path / "data")
    named = breaker(root, "val")
    out = tmp_path / "metrics.json"
    code = main(["evaluate", "--model", "local/shapes", "--data-dir", str(root), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert EVALUATE_WORDS.get(row, words) in lines[0]
    # evaluate names the pair by file stem where a prediction is involved, else the path
    assert str(root / named) in lines[0] or Path(named).stem in lines[0], lines[0]
    assert not out.exists()


def test_evaluate_cli_on_the_intact_dataset(tmp_path, evaluate_env):
    """The control for the evaluate rows: same command, unbroken dataset."""
    out = tmp_path / "metrics.json"
    command = ["evaluate", "--model", "local/shapes", "--data-dir", str(_dataset(tmp_path / "d"))]
    assert main([*command, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["evaluation"]["num_images"] == 2


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_odd_image_files_in_a_dataset(tmp_path, monkeypatch, case):
    """The photos of a dataset go through segdemo.images like uploads: same rules, same decoding."""
    monkeypatch.setenv("SEGDEMO_MAX_PIXELS", str(SMALL_MAX_PIXELS))
    root = _dataset(tmp_path / "data")
    (root / "train" / "images" / "train_001.png").unlink()
    path = write_case(root / "train" / "images", case)
    # datasets list no .gif: the GIF's bytes go in under a .png name (Pillow reads the content)
    suffix = path.suffix if path.suffix in data.IMAGE_SUFFIXES else ".png"
    path = path.rename(path.with_name("train_001" + suffix))
    if case.expect == "ok":
        # an annotation of the picture as displayed (EXIF-rotated: portrait)
        width, height = case.size
        Image.fromarray(np.zeros((height, width), np.uint8)).save(
            root / "train" / "annotations" / "train_001.png"
        )
    splits = data.load_folder(root)
    if case.expect == "error":
        with pytest.raises(data.DatasetError) as info:
            data.validate(splits.train, NUM_LABELS, split="train")
        assert str(path) in str(info.value) and case.words in str(info.value)
        assert "\n" not in str(info.value)
    else:
        data.validate(splits.train, NUM_LABELS, split="train")
        image, raw = splits.train[[p.image for p in splits.train.pairs].index(path)]
        check_valid(case, np.asarray(image))
        assert raw.shape == (image.height, image.width)
