"""``python -m segdemo predict`` / ``models``: files written, bad input reported in one line."""

from __future__ import annotations

import argparse
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from segdemo import models
from segdemo.__main__ import build_parser, main
from tests.builders import build_tiny

MANY_LABELS = {i: f"class_{i}" for i in range(300)}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-src")
    return {
        "seg": build_tiny("segformer", root / "seg"),
        "m2f": build_tiny("mask2former", root / "m2f"),
        "wide": build_tiny("segformer", root / "wide", id2label=MANY_LABELS),
    }


@pytest.fixture()
def env(tmp_path, monkeypatch, sources):
    checkpoints = tmp_path / "checkpoints"
    for name, folder in sources.items():
        shutil.copytree(folder, checkpoints / name)
    monkeypatch.setenv("SEGDEMO_CHECKPOINTS", str(checkpoints))
    models.clear_cache()
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(images / "a.png")
    Image.fromarray(rng.integers(0, 255, (30, 50), dtype=np.uint8)).save(images / "b.jpg")  # grey
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (images / "empty.png").write_bytes(b"")
    yield tmp_path
    models.clear_cache()


def _predict(env, *args):
    out = env / "out"
    return main(["predict", *args, "--out", str(out)]), out


# one row per task/model: label PNG mode expected
LABEL_PNG = [
    ("local/seg", "semantic", "L"),  # 4 classes: 8-bit class ids
    ("local/wide", "semantic", "I;16"),  # 300 classes do not fit 8 bits
    # segment ids: one rule with the app (segdemo.result_files): 8-bit while they fit
    ("local/m2f", "instance", "L"),
    ("local/m2f", "panoptic", "L"),
]


@pytest.mark.parametrize("model, task, mode", LABEL_PNG)
def test_predict_writes_three_files_per_image(env, model, task, mode):
    images = env / "images"
    code, out = _predict(
        env,
        str(images / "a.png"),
        str(images / "b.jpg"),
        "--model",
        model,
        "--task",
        task,
        "--threshold",
        "0",
    )
    assert code == 0
    for name, size in (("a", (60, 40)), ("b", (50, 30))):
        overlay = Image.open(out / f"{name}_overlay.png")
        assert overlay.mode == "RGB" and overlay.height == size[1] and overlay.width >= size[0]
        labels = Image.open(out / f"{name}_labels.png")
        assert labels.mode == mode and labels.size == size
        summary = json.loads((out / f"{name}_segments.json").read_text())
        assert summary["task"] == task and summary["model"] == model
        assert (summary["width"], summary["height"]) == size
        ids = np.asarray(labels)
        for seg in summary["segments"]:
            assert (ids == seg["id"]).sum() == seg["area"]
        if task == "semantic":
            assert {s["id"] for s in summary["segments"]} == set(np.unique(ids).tolist())


def test_bad_images_are_reported_and_the_rest_processed(env, capsys):
    images = env / "images"
    args = [str(images / n) for n in ("broken.jpg", "a.png", "empty.png", "missing.png")]
    code, out = _predict(env, *args, "--model", "local/seg", "--task", "semantic")
    err = capsys.readouterr().err
    assert code == 1
    assert (out / "a_overlay.png").is_file()
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert [line.split(":")[1].strip() for line in lines] == [
        "broken.jpg",
        "empty.png",
        "missing.png",
    ]
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "model, task, words",
    [
        # a hub id is tried (the CLI's user is the operator); offline it is not cached
        ("someone/else", "semantic", "not in the local Hugging Face cache"),
        ("local/seg", "panoptic", "supports: semantic"),
    ],
)
def test_model_errors_are_one_line(env, capsys, model, task, words):
    code, _ = _predict(env, str(env / "images" / "a.png"), "--model", model, "--task", task)
    err = capsys.readouterr().err
    assert code == 1 and words in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_same_file_names_do_not_overwrite(env):
    other = env / "other"
    other.mkdir()
    shutil.copy(env / "images" / "a.png", other / "a.png")
    code, out = _predict(
        env,
        str(env / "images" / "a.png"),
        str(other / "a.png"),
        "--model",
        "local/seg",
        "--task",
        "semantic",
    )
    assert code == 0
    assert (out / "a_labels.png").is_file() and (out / "a_2_labels.png").is_file()


def test_models_lists_registry_with_offline_availability(env, capsys):
    assert main(["models", "--json"]) == 0
    rows = {row["id"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["local/m2f"]["offline"] is True
    assert rows["local/m2f"]["tasks"] == ["semantic", "instance", "panoptic"]
    assert rows["nvidia/segformer-b0-finetuned-ade-512-512"]["offline"] is False
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    assert "local/seg" in table and "semantic" in table


def test_predict_takes_a_checkpoint_folder_without_any_env_var(env, sources, monkeypatch):
    """The person at the command line is the operator: no SEGDEMO_ALLOW_ANY_MODEL needed."""
    monkeypatch.delenv("SEGDEMO_ALLOW_ANY_MODEL", raising=False)
    folder = env / "elsewhere" / "mine"  # outside the checkpoints folder
    shutil.copytree(sources["seg"], folder)
    code, out = _predict(
        env, str(env / "images" / "a.png"), "--model", str(folder), "--task", "semantic"
    )
    assert code == 0 and (out / "a_labels.png").is_file()
    summary = json.loads((out / "a_segments.json").read_text())
    assert summary["model"] == str(folder)
    assert "SEGDEMO_ALLOW_ANY_MODEL" not in os.environ  # nothing set behind the caller's back


def test_evaluate_takes_a_checkpoint_folder_and_sets_no_env_var(env, tmp_path, monkeypatch):
    from tests.test_evaluate import ID2LABEL, VOID, write_dataset

    monkeypatch.delenv("SEGDEMO_ALLOW_ANY_MODEL", raising=False)
    write_dataset(tmp_path / "data", n=1, size=(24, 32))
    model = build_tiny("segformer", tmp_path / "model", id2label=ID2LABEL, image_size=32)
    args = ["--model", str(model), "--data-dir", str(tmp_path / "data")]
    args += ["--ignore-index", str(VOID), "--out", str(tmp_path / "m.json")]
    assert main(["evaluate", *args]) == 0
    assert "SEGDEMO_ALLOW_ANY_MODEL" not in os.environ


def _subcommand_parsers(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _subcommand_parsers(sub, (*prefix, name))


def test_every_option_of_every_command_has_help():
    missing = [
        f"{' '.join(command)} {action.option_strings or action.dest}"
        for command, parser in _subcommand_parsers(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]
    assert missing == []


def test_convert_is_a_subcommand(tmp_path, capsys):
    args = ["convert", "semantic-to-panoptic", "--data-dir", str(tmp_path / "absent")]
    code = main([*args, "--things", "car", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
