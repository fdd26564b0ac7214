"""segdemo.checkpoint: atomic saving, safe loading, and one clear error per broken folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segdemo.checkpoint import CheckpointError, is_checkpoint, load_checkpoint, save_checkpoint
from segdemo.registry import discover_local
from tests.builders import build_tiny, keep_only_pickle_weights


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {
        family: build_tiny(family, root / family)
        for family in ("segformer", "mask2former", "oneformer")
    }


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


@pytest.mark.parametrize(
    "family, model_class, processor_class",
    [
        ("segformer", "SegformerForSemanticSegmentation", "SegformerImageProcessorPil"),
        ("mask2former", "Mask2FormerForUniversalSegmentation", "Mask2FormerImageProcessorPil"),
        # OneFormer needs its tokenizer for the task prompt: a full processor
        ("oneformer", "OneFormerForUniversalSegmentation", "OneFormerProcessor"),
    ],
)
def test_load_picks_auto_class_and_processor(tiny, family, model_class, processor_class):
    model, processor = load_checkpoint(tiny[family])
    assert type(model).__name__ == model_class
    assert type(processor).__name__ == processor_class
    assert not model.training
    if family == "oneformer":
        assert processor.tokenizer is not None
        assert processor.image_processor.metadata["thing_ids"] == [2, 3]


def test_save_roundtrip_keeps_weights_and_extra_files(tiny, tmp_path):
    model, processor = load_checkpoint(tiny["segformer"])
    out = save_checkpoint(
        tmp_path / "run" / "best",
        model,
        processor,
        {"README.md": "# card", "sub/blob.bin": b"\x00\x01"},
    )
    assert is_checkpoint(out)
    assert (out / "model.safetensors").is_file() and not (out / "pytorch_model.bin").exists()
    assert (out / "README.md").read_text() == "# card"
    assert (out / "sub" / "blob.bin").read_bytes() == b"\x00\x01"
    again, _ = load_checkpoint(out)
    pixels = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(model(pixel_values=pixels).logits, again(pixel_values=pixels).logits)


def test_save_replaces_existing_checkpoint_and_leaves_no_temp(tiny, tmp_path):
    model, processor = load_checkpoint(tiny["segformer"])
    out = save_checkpoint(tmp_path / "best", model, processor, {"step.txt": "1"})
    save_checkpoint(out, model, processor, {"other.txt": "2"})
    assert (out / "other.txt").read_text() == "2"
    assert not (out / "step.txt").exists()  # the old folder was swapped out, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


class _ExplodingProcessor:
    def save_pretrained(self, folder):
        (Path(folder) / "preprocessor_config.json").write_text("{")  # half written...
        raise OSError("disk full")  # ...then the process fails


def test_failed_save_keeps_previous_checkpoint(tiny, tmp_path):
    model, processor = load_checkpoint(tiny["segformer"])
    out = save_checkpoint(tmp_path / "best", model, processor, {"step.txt": "1"})
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(out, model, _ExplodingProcessor())
    assert (out / "step.txt").read_text() == "1"
    load_checkpoint(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_killed_save_leaves_only_a_hidden_temp_that_is_no_checkpoint(tiny, tmp_path):
    """SIGKILL in the middle of save_checkpoint: the final name never holds a partial folder."""
    script = (
        "import os, signal, sys\n"
        "from segdemo import checkpoint\n"
        "model, processor = checkpoint.load_checkpoint(sys.argv[1])\n"
        "def die(*a, **k): os.kill(os.getpid(), signal.SIGKILL)\n"
        "checkpoint._fsync_tree = die  # killed after the files are written, before the rename\n"
        "checkpoint.save_checkpoint(sys.argv[2], model, processor)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    run = subprocess.run(
        [sys.executable, "-c", script, str(tiny["segformer"]), str(tmp_path / "best")], env=env
    )
    assert run.returncode == -9
    leftovers = list(tmp_path.iterdir())
    assert not (tmp_path / "best").exists()
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".best.tmp-")
    assert not is_checkpoint(leftovers[0])  # complete files, but a temp name
    assert discover_local(tmp_path) == []
    # the next save by a live process cleans the dead process's temp folder
    model, processor = load_checkpoint(tiny["segformer"])
    save_checkpoint(tmp_path / "best", model, processor)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def _rewrite_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# one row per broken folder: how to break it, and words the message must contain
BROKEN = [
    ("missing config", lambda f: (f / "config.json").unlink(), "config.json is missing"),
    ("config not json", lambda f: (f / "config.json").write_text("{nope"), "not valid JSON"),
    ("missing weights", lambda f: (f / "model.safetensors").unlink(), "no weights"),
    ("truncated safetensors", lambda f: _truncate(f / "model.safetensors"), "corrupt or truncated"),
    (
        "garbage safetensors",
        lambda f: (f / "model.safetensors").write_bytes(b"\xff" * 64),
        "corrupt",
    ),
    (
        "unsupported architecture",
        lambda f: _rewrite_config(f, model_type="bert"),
        "unsupported architecture 'bert'",
    ),
    ("no model_type", lambda f: _rewrite_config(f, model_type=None), "unsupported architecture"),
    (
        "weights of another shape",
        lambda f: _rewrite_config(f, decoder_hidden_size=24),
        "do not match config.json",
    ),
    (
        "missing processor",
        lambda f: (f / "preprocessor_config.json").unlink(),
        "preprocessor_config.json is missing",
    ),
    ("pickle weights only", keep_only_pickle_weights, "SEGDEMO_ALLOW_PICKLE=1"),
]


@pytest.mark.parametrize("case, breaker, words", BROKEN, ids=[row[0] for row in BROKEN])
def test_broken_checkpoint_gives_one_line_naming_the_folder(tiny, tmp_path, case, breaker, words):
    folder = _copy(tiny["segformer"], tmp_path / "broken")
    breaker(folder)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(folder)
    message = str(info.value)
    assert str(folder) in message and words in message
    assert "\n" not in message


def test_not_a_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        load_checkpoint(tmp_path / "absent")


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_pickle_weights_load_only_when_allowed(tiny, tmp_path, monkeypatch, how):
    folder = _copy(tiny["segformer"], tmp_path / "pickled")
    keep_only_pickle_weights(folder)
    if how == "environment":
        monkeypatch.setenv("SEGDEMO_ALLOW_PICKLE", "1")
        model, _ = load_checkpoint(folder)
    else:
        model, _ = load_checkpoint(folder, allow_pickle=True)
    assert type(model).__name__ == "SegformerForSemanticSegmentation"


@pytest.mark.parametrize(
    "files, expected",
    [
        (["config.json", "model.safetensors"], True),
        (["config.json", "pytorch_model.bin"], True),  # a checkpoint; loading it is another matter
        (["config.json"], False),
        (["model.safetensors"], False),
        ([], False),
    ],
)
def test_is_checkpoint(tmp_path, files, expected):
    for name in files:
        (tmp_path / name).write_text("{}")
    assert is_checkpoint(tmp_path) is expected
