"""app.py on ZeroGPU hardware, with a stand-in ``spaces`` package on ``sys.path``.

On ZeroGPU (``SPACES_ZERO_GPU`` set and ``spaces`` importable) the four handlers run under
``@spaces.GPU(duration=...)`` and each tab's default model loads at start-up; elsewhere,
or without the package, the app is built exactly as before.
"""

from __future__ import annotations

import inspect
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

import app
from segdemo import models, service
from segdemo.result import Task
from tests.builders import build_tiny

STAND_IN = '''
"""Stand-in for Hugging Face's ``spaces``: ``GPU(duration=...)`` records what it is asked."""
import functools

calls = []  # (handler name, seconds) per call


def GPU(func=None, *, duration=60):
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            seconds = duration(*args, **kwargs) if callable(duration) else duration
            calls.append((fn.__name__, seconds))
            return fn(*args, **kwargs)

        wrapper.on_zero_gpu = True
        return wrapper

    return decorate(func) if func is not None else decorate
'''

ENDPOINTS = {
    "semantic": app.semantic,
    "instance": app.instance,
    "panoptic": app.panoptic,
    "compare": app.compare,
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("zerogpu")
    folder = root / "checkpoints"
    build_tiny("segformer", folder / "seg")
    build_tiny("mask2former", folder / "m2f")
    photo = root / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(photo)
    return folder, photo


@pytest.fixture()
def space(tmp_path, monkeypatch, checkpoints):
    """The stand-in ``spaces`` importable, local tiny checkpoints, an empty model cache."""
    folder, photo = checkpoints
    shutil.copytree(folder, tmp_path / "checkpoints")
    monkeypatch.setenv("SEGDEMO_CHECKPOINTS", str(tmp_path / "checkpoints"))
    (tmp_path / "spaces.py").write_text(STAND_IN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "spaces", raising=False)
    models.clear_cache()
    yield photo
    sys.modules.pop("spaces", None)
    models.clear_cache()


def _handlers(demo) -> dict:
    return {f.api_name: f.fn for f in demo.fns.values() if f.api_name in ENDPOINTS}


@pytest.mark.parametrize(
    "zero_gpu, importable",
    [
        (None, True),  # spaces installed (any Space), not ZeroGPU hardware
        ("true", False),  # ZeroGPU set but no spaces package
        ("0", True),
    ],
)
def test_elsewhere_the_app_is_built_as_before(space, monkeypatch, zero_gpu, importable):
    if zero_gpu is None:
        monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    else:
        monkeypatch.setenv("SPACES_ZERO_GPU", zero_gpu)
    if not importable:
        monkeypatch.setitem(sys.modules, "spaces", None)  # import spaces -> ImportError
    assert app.zero_gpu() is None
    assert _handlers(app.create_app()) == ENDPOINTS  # the plain functions
    assert models.cached_model_ids() == []  # nothing loads before the first request


def test_on_zero_gpu_handlers_run_under_spaces_gpu_and_defaults_load_at_start(space, monkeypatch):
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    defaults = list(dict.fromkeys(filter(None, map(service.default_model_id, Task))))
    assert defaults, "no default model to preload"
    handlers = _handlers(app.create_app())
    # every inference endpoint, with the handler's own signature (gradio names the API
    # parameters after it) and nothing else wrapped
    assert set(handlers) == set(ENDPOINTS)
    for name, handler in handlers.items():
        assert handler.on_zero_gpu and handler.__wrapped__ is ENDPOINTS[name]
        assert inspect.signature(handler) == inspect.signature(ENDPOINTS[name])
    # the defaults loaded at start-up, in the main process, on the CPU here
    assert models.cached_model_ids() == defaults[: models.cache_size()]
    assert {models.load_model(m).device for m in models.cached_model_ids()} == {"cpu"}


def test_durations_are_sized_to_the_task_and_to_what_must_load(space, monkeypatch):
    monkeypatch.setenv("SPACES_ZERO_GPU", "1")
    app.create_app()
    ready = models.cached_model_ids()[0]
    run, load = app.ZERO_GPU_RUN_SECONDS, app.ZERO_GPU_LOAD_SECONDS
    assert app.zero_gpu_seconds("semantic", None, ready, 0.5) == run[Task.SEMANTIC]
    assert app.zero_gpu_seconds("panoptic", None, "local/other", 0.9, 0.5, 0.5, 0.5) == (
        run[Task.PANOPTIC] + load
    )
    assert app.zero_gpu_seconds("instance", image=None, model=ready) == run[Task.INSTANCE]
    # compare: each task that has a model; an empty dropdown runs nothing
    assert app.zero_gpu_seconds("compare", None, ready, "", "local/other", 0.5) == (
        run[Task.SEMANTIC] + run[Task.PANOPTIC] + load
    )


def test_a_request_under_spaces_gpu_gives_the_plain_handler_output(space, monkeypatch):
    photo = space
    upload = {"path": str(photo), "orig_name": "photo.png"}
    plain = app.semantic(upload, "local/seg", 0.5, progress=lambda *a, **k: None)
    models.clear_cache()

    monkeypatch.setenv("SPACES_ZERO_GPU", "1")
    handler = _handlers(app.create_app())["semantic"]
    preloaded = "local/seg" in models.cached_model_ids()
    gpu = handler(upload, "local/seg", 0.5, progress=lambda *a, **k: None)
    seconds = app.ZERO_GPU_RUN_SECONDS[Task.SEMANTIC]
    seconds += 0 if preloaded else app.ZERO_GPU_LOAD_SECONDS
    assert sys.modules["spaces"].calls == [("semantic", seconds)]
    # the same label map and segment list files, byte for byte
    for index in (3, 4):
        assert open(gpu[index], "rb").read() == open(plain[index], "rb").read()
    assert gpu[2] == plain[2]  # the segments table
