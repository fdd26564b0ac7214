"""What a caller of the app/API can make the server do, and what it can learn.

* Models: only registry ids and discovered local checkpoints; paths, hidden temp folders
  and other hub ids are refused unless the operator sets ``SEGDEMO_ALLOW_ANY_MODEL=1``.
* Code execution: ``trust_remote_code`` is never on (every ``from_pretrained`` call says
  False; custom code in a checkpoint never runs), and pickle weights are not loaded unless
  ``SEGDEMO_ALLOW_PICKLE=1`` (a pickle whose unpickling writes a marker file never writes it).
* Uploads: gradio's ``max_file_size`` (app.MAX_FILE_SIZE) is advertised and enforced.
* Secrets: with a fake ``HF_TOKEN`` set, no error, output, log line or config response
  contains it.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import shutil
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from tests.builders import build_tiny
from tests.inputs import gradient
from tests.test_app import serve_app

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FAKE_TOKEN = "hf_segdemoFAKEtoken0123456789abcdefXYZ"
GOOD = "local/good"


class _Payload:
    """Unpickling this writes ``marker``: proof that a pickle's code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pickle code ran"))


def _pickled_checkpoint(good: Path, folder: Path, marker: Path) -> Path:
    shutil.copytree(good, folder)
    (folder / "model.safetensors").unlink()
    torch.save({"decode_head.classifier.weight": _Payload(marker)}, folder / "pytorch_model.bin")
    return folder


def _custom_code_checkpoint(good: Path, folder: Path, marker: Path, *, processor: bool) -> Path:
    """A checkpoint whose config (or processor config) points at code in the folder."""
    shutil.copytree(good, folder)
    (folder / "custom.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('custom code ran')\n"
        "from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessorPil\n"
        "class CustomConfig(SegformerConfig): pass\n"
        "class CustomModel(SegformerForSemanticSegmentation): pass\n"
        "class CustomProcessor(SegformerImageProcessorPil): pass\n"
    )
    if processor:  # an unknown processor class that only the custom code defines
        path, extra = (
            folder / "preprocessor_config.json",
            {
                "image_processor_type": "CustomProcessor",
                "auto_map": {"AutoImageProcessor": "custom.CustomProcessor"},
            },
        )
    else:  # a known model type, with custom classes offered beside it
        path, extra = (
            folder / "config.json",
            {
                "auto_map": {
                    "AutoConfig": "custom.CustomConfig",
                    "AutoModelForSemanticSegmentation": "custom.CustomModel",
                }
            },
        )
    path.write_text(json.dumps(json.loads(path.read_text()) | extra))
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The app with a fake HF token in its environment, and the folders the tests point at."""
    root = tmp_path_factory.mktemp("security")
    good = build_tiny("segformer", root / "build" / "good")
    markers = root / "markers"
    markers.mkdir()
    checkpoints = root / "checkpoints"
    shutil.copytree(good, checkpoints / "good")
    # a complete checkpoint under a save_checkpoint temp name: never offered
    shutil.copytree(good, checkpoints / ".good.tmp-1-deadbeef")
    _pickled_checkpoint(good, checkpoints / "pickled", markers / "pickle")
    _custom_code_checkpoint(good, checkpoints / "custom-model", markers / "model", processor=False)
    _custom_code_checkpoint(good, checkpoints / "custom-proc", markers / "proc", processor=True)
    outside = shutil.copytree(good, root / "outside" / "model")
    files = root / "files"
    files.mkdir()
    photo = files / "photo.png"
    Image.fromarray(gradient()).save(photo)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", FAKE_TOKEN)
        mp.setenv("HUGGING_FACE_HUB_TOKEN", FAKE_TOKEN)
        with serve_app(checkpoints, root / "scratch") as demo:
            client = Client(demo.local_url, verbose=False, download_files=str(files))
            yield {
                "demo": demo,
                "client": client,
                "photo": str(photo),
                "markers": markers,
                "outside": outside,
                "checkpoints": checkpoints,
            }


def _semantic(world, model_id: str):
    return world["client"].predict(handle_file(world["photo"]), model_id, 0.5, api_name="/semantic")


def _no_code_ran(world) -> None:
    assert list(world["markers"].iterdir()) == []


# --------------------------------------------------------------------------- model choice

# one row per model id a caller might send: what must happen without the operator's opt-in
MODEL_IDS = [
    (GOOD, "served"),  # a discovered local checkpoint
    ("OUTSIDE", "not offered here"),  # the absolute path of a real checkpoint elsewhere
    ("local/../outside/model", "not offered here"),  # a traversal out of the checkpoints dir
    ("local/.good.tmp-1-deadbeef", "not offered here"),  # a temp folder of a save
    ("CHECKPOINTS/good", "not offered here"),  # the path of an offered one, not its id
    ("someone/any-model", "not offered here"),  # a hub id outside the registry
    ("  local/good  ", "served"),  # surrounding spaces are trimmed, nothing more
]


@pytest.mark.parametrize("model_id, outcome", MODEL_IDS, ids=[r[0].strip() for r in MODEL_IDS])
def test_only_offered_models_can_be_picked(world, model_id, outcome, monkeypatch):
    monkeypatch.delenv("SEGDEMO_ALLOW_ANY_MODEL", raising=False)
    model_id = model_id.replace("OUTSIDE", str(world["outside"]))
    model_id = model_id.replace("CHECKPOINTS", str(world["checkpoints"]))
    if outcome == "served":
        assert _semantic(world, model_id)[2]["data"]
    else:
        with pytest.raises(AppError, match=outcome):
            _semantic(world, model_id)


def test_the_operator_can_allow_any_model(world, monkeypatch):
    """SEGDEMO_ALLOW_ANY_MODEL=1: a checkpoint folder anywhere on the server is served
    (the variable is read per request, so the running app picks it up)."""
    monkeypatch.setenv("SEGDEMO_ALLOW_ANY_MODEL", "1")
    assert _semantic(world, str(world["outside"]))[2]["data"]
    monkeypatch.delenv("SEGDEMO_ALLOW_ANY_MODEL")
    with pytest.raises(AppError, match="not offered here"):
        _semantic(world, str(world["outside"]))


# --------------------------------------------------------------------------- code execution


def _from_pretrained_calls(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "from_pretrained"
        ):
            yield node


SOURCES = sorted([*REPO.glob("segdemo/*.py"), REPO / "app.py", *REPO.glob("train/*.py")])


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(REPO)) for p in SOURCES])
def test_every_from_pretrained_call_refuses_remote_code(path):
    """Source-level: each call passes ``trust_remote_code=False`` (left out, transformers
    asks on a terminal whether to run a folder's custom code), and nothing says True."""
    text = path.read_text(encoding="utf-8")
    assert "trust_remote_code=True" not in text.replace(" ", "")
    for call in _from_pretrained_calls(path):
        values = [k.value for k in call.keywords if k.arg == "trust_remote_code"]
        assert len(values) == 1 and isinstance(values[0], ast.Constant), (
            f"{path.name}:{call.lineno}: from_pretrained without trust_remote_code=False"
        )
        assert values[0].value is False, f"{path.name}:{call.lineno}"


# an absolute path in a message: "/" after a space, quote or bracket, then a folder name
_SERVER_PATH = re.compile(r"(?:^|[\s'\"(\[])/[\w.-]+/")

# one row per checkpoint carrying code: what the app does with it
CODE_ROWS = [
    # a pickle that runs code when unpickled: refused before anything is read
    ("local/pickled", "", "SEGDEMO_ALLOW_PICKLE=1"),
    # even with the opt-in, torch's weights-only unpickler refuses the code object
    ("local/pickled", "SEGDEMO_ALLOW_PICKLE", "could not be loaded"),
    # custom model classes beside a known model type: the built-in class is used
    ("local/custom-model", "", "served"),
    # a processor only custom code defines: refused, not run
    ("local/custom-proc", "", "contains custom code"),
]


@pytest.mark.parametrize("model_id, env, outcome", CODE_ROWS)
def test_no_code_from_a_checkpoint_runs(world, monkeypatch, model_id, env, outcome):
    from segdemo import models

    models.clear_cache()
    if env:
        monkeypatch.setenv(env, "1")
    if outcome == "served":
        assert _semantic(world, model_id)[2]["data"]
        assert (
            type(models.load_model(model_id).model).__name__ == "SegformerForSemanticSegmentation"
        )
    else:
        with pytest.raises(AppError, match=outcome) as info:
            _semantic(world, model_id)
        message = str(info.value)
        assert "\n" not in message
        # the caller learns the model id, not where the server keeps it (docs/robustness.md)
        assert model_id in message
        assert str(world["checkpoints"].parent) not in message
        assert not _SERVER_PATH.search(message), message
    _no_code_ran(world)
    assert _semantic(world, GOOD)[2]["data"]  # and the app keeps serving


# --------------------------------------------------------------------------- uploads


def test_upload_cap_is_advertised_and_enforced(world):
    from gradio.utils import _parse_file_size

    import app

    cap = _parse_file_size(app.MAX_FILE_SIZE)
    assert cap == 20 * 1024 * 1024  # the "20 MB" the page and docs/robustness.md state
    assert world["client"].config["max_file_size"] == cap  # clients can check before sending
    url = world["demo"].local_url.rstrip("/") + "/gradio_api/upload"
    over = httpx.post(url, files={"files": ("big.png", b"\0" * (cap + 1))}, timeout=60)
    assert over.status_code == 413 and "maximum allowed size" in over.text
    under = httpx.post(url, files={"files": ("small.png", b"\0" * 1024)}, timeout=60)
    assert under.status_code == 200


# --------------------------------------------------------------------------- secrets


def test_no_token_in_errors_outputs_logs_or_config(world, monkeypatch, caplog, capfd, tmp_path):
    """Drive every kind of failure with HF_TOKEN set, then look for it everywhere."""
    import app

    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    requests = [
        (world["photo"], GOOD, {}),  # a good request: its JSON download and table
        (str(bad), GOOD, {}),  # a bad upload
        (world["photo"], "someone/any-model", {}),  # a model not offered
        # allowed, but a hub id not in the cache while offline: the hub code path
        (world["photo"], "someone/any-model", {"SEGDEMO_ALLOW_ANY_MODEL": "1"}),
        (world["photo"], "local/pickled", {}),  # a refused pickle
    ]
    for image, model_id, env in requests:
        with monkeypatch.context() as mp:
            for name, value in env.items():
                mp.setenv(name, value)
            try:
                outputs = world["client"].predict(
                    handle_file(image), model_id, 0.5, api_name="/semantic"
                )
                seen.append(json.dumps(outputs, default=str))
                seen += [Path(outputs[4]).read_text(), json.dumps(outputs[2])]
            except AppError as err:
                seen.append(str(err))

    def explode(*args, **kwargs):
        raise RuntimeError("segmentation blew up")

    with monkeypatch.context() as mp:  # an unexpected error: logged with its traceback
        mp.setattr(app.service, "segment", explode)
        with pytest.raises(AppError, match="failed unexpectedly") as info:
            _semantic(world, GOOD)
        seen.append(str(info.value))
    base = world["demo"].local_url.rstrip("/")
    for route in ("/config", "/gradio_api/info"):
        seen.append(httpx.get(base + route, timeout=30).text)
    logs = caplog.text
    out, err = capfd.readouterr()
    assert "segmentation blew up" in logs + err  # the unexpected error did reach the log
    for text in [*seen, logs, out, err]:
        assert FAKE_TOKEN not in text


def test_no_token_in_cli_messages(tmp_path, monkeypatch, capsys):
    from segdemo.__main__ import main
    from train import run

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("SEGDEMO_CHECKPOINTS", str(tmp_path))
    image = tmp_path / "a.png"
    Image.fromarray(gradient()).save(image)
    assert main(["models"]) == 0
    predict = ["predict", str(image), "--task", "semantic", "--out", str(tmp_path / "o")]
    assert main([*predict, "--model", "someone/any-model"]) == 1
    monkeypatch.setenv("SEGDEMO_ALLOW_ANY_MODEL", "1")
    assert main([*predict, "--model", "someone/any-model"]) == 1  # offline hub path
    with pytest.raises(SystemExit):  # --push-to-hub refused offline
        run.parse_args(["--data-dir", str(tmp_path), "--push-to-hub"])
    out, err = capsys.readouterr()
    assert "someone/any-model" in err  # the errors were printed...
    assert FAKE_TOKEN not in out + err  # ...without the token
