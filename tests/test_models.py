"""segdemo.registry and segdemo.models: what is offered, what loads, how the cache behaves.

The hub-id path runs in subprocesses: huggingface_hub reads HF_HUB_CACHE when it is
imported, so a hand-built cache must be in the environment before that.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from segdemo import hub, models, registry, service
from segdemo.models import ModelLoadError, UnsupportedTaskError, load_model
from segdemo.registry import ModelNotAllowedError
from segdemo.result import Task
from tests.builders import build_tiny

ROOT = Path(__file__).resolve().parents[1]
CAMVID_ID2LABEL = dict(enumerate(registry.CAMVID_LABELS))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models-src")
    return {
        "segformer": build_tiny("segformer", root / "segformer"),
        "mask2former": build_tiny("mask2former", root / "mask2former"),
        "camvid": build_tiny("segformer", root / "camvid", id2label=CAMVID_ID2LABEL),
    }


@pytest.fixture()
def checkpoints(tmp_path, monkeypatch, tiny) -> Path:
    """A checkpoints dir with local/seg, local/m2f and local/segdemo-camvid; empty model cache."""
    root = tmp_path / "checkpoints"
    root.mkdir()
    shutil.copytree(tiny["segformer"], root / "seg")
    shutil.copytree(tiny["mask2former"], root / "m2f")
    shutil.copytree(tiny["camvid"], root / "segdemo-camvid")
    monkeypatch.setenv("SEGDEMO_CHECKPOINTS", str(root))
    monkeypatch.delenv("SEGDEMO_ALLOW_ANY_MODEL", raising=False)
    models.clear_cache()
    yield root
    models.clear_cache()


# --------------------------------------------------------------------------- registry


REQUIRED_CURATED = [
    ("nvidia/segformer-b0-finetuned-ade-512-512", Task.SEMANTIC, "ade20k"),
    ("nvidia/segformer-b1-finetuned-cityscapes-1024-1024", Task.SEMANTIC, "cityscapes"),
    ("facebook/mask2former-swin-large-cityscapes-instance", Task.INSTANCE, "cityscapes"),
    ("facebook/mask2former-swin-large-cityscapes-panoptic", Task.PANOPTIC, "cityscapes"),
    ("facebook/mask2former-swin-tiny-coco-panoptic", Task.PANOPTIC, "coco_panoptic"),
    ("shi-labs/oneformer_ade20k_swin_tiny", Task.SEMANTIC, "ade20k"),
]


@pytest.mark.parametrize("model_id, task, palette", REQUIRED_CURATED)
def test_curated_models(model_id, task, palette):
    spec = registry.get_spec(model_id)
    assert spec.source == "hub" and spec.path is None
    assert task in spec.tasks and spec.palette == palette
    assert spec in registry.models_for_task(task)


def test_every_curated_palette_is_known():
    assert {spec.palette for spec in registry.CURATED} <= set(registry.PALETTES)


def test_checkpoints_dir_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("SEGDEMO_CHECKPOINTS", raising=False)
    assert registry.checkpoints_dir() == ROOT / "checkpoints"
    monkeypatch.setenv("SEGDEMO_CHECKPOINTS", str(tmp_path))
    assert registry.checkpoints_dir() == tmp_path


def test_discover_local(checkpoints):
    # things that must not show up: a temp folder of an interrupted save, a plain folder, a file
    shutil.copytree(checkpoints / "seg", checkpoints / ".seg.tmp-99999-abcd1234")
    (checkpoints / "notes").mkdir()
    (checkpoints / "README.md").write_text("hi")
    specs = {spec.id: spec for spec in registry.discover_local()}
    assert sorted(specs) == ["local/m2f", "local/seg", "local/segdemo-camvid"]
    assert specs["local/seg"].tasks == (Task.SEMANTIC,)
    assert specs["local/m2f"].tasks == (Task.SEMANTIC, Task.INSTANCE, Task.PANOPTIC)
    assert specs["local/seg"].path == checkpoints / "seg"


@pytest.mark.parametrize(
    "folder, spec_file, palette",
    [
        ("segdemo-camvid", None, "camvid"),  # CamVid's 11 names -> the CamVid palette
        ("seg", None, "generated"),  # any other label set
        ("seg", {"palette": "ade20k", "title": "Mine"}, "ade20k"),  # declared in segdemo.json
        ("seg", {"palette": "rainbow"}, "generated"),  # unknown name: ignored
    ],
)
def test_local_palette(checkpoints, folder, spec_file, palette):
    if spec_file is not None:
        (checkpoints / folder / "segdemo.json").write_text(json.dumps(spec_file))
    spec = registry.get_spec(f"local/{folder}")
    assert spec.palette == palette
    if spec_file and "title" in spec_file:
        assert spec.title == spec_file["title"]


@pytest.mark.parametrize("model_id", ["someone/else", "local/absent", "/etc", "../checkpoints/seg"])
def test_get_spec_refuses_unlisted_ids(checkpoints, model_id):
    with pytest.raises(ModelNotAllowedError, match="SEGDEMO_ALLOW_ANY_MODEL=1"):
        registry.get_spec(model_id)


def test_get_spec_allows_any_model_when_the_operator_says_so(checkpoints, monkeypatch):
    monkeypatch.setenv("SEGDEMO_ALLOW_ANY_MODEL", "1")
    allow_any = service.allow_any_model()
    assert registry.get_spec("someone/else", allow_any=allow_any).source == "hub"
    path_spec = registry.get_spec(str(checkpoints / "m2f"), allow_any=allow_any)
    assert path_spec.source == "local" and Task.PANOPTIC in path_spec.tasks


def test_offline_hub_is_unreachable_at_once():
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # tests/conftest.py
    start = time.perf_counter()
    assert hub.reachable() is False
    assert time.perf_counter() - start < 0.1


@pytest.mark.parametrize(
    "present, task, expected",
    [
        (
            ["seg", "m2f", "segdemo-camvid"],
            Task.SEMANTIC,
            "local/segdemo-camvid",
        ),  # embedded model first
        (["seg", "m2f"], Task.SEMANTIC, "local/m2f"),  # else the first one available offline
        (
            ["seg", "m2f", "segdemo-camvid"],
            Task.PANOPTIC,
            "local/m2f",
        ),  # the embedded one is semantic only
        (["seg"], Task.INSTANCE, None),  # nothing offline can do it
    ],
)
def test_default_model_offline(checkpoints, present, task, expected):
    for folder in checkpoints.iterdir():
        if folder.name not in present:
            shutil.rmtree(folder)
    spec = service.default_model(task)
    assert (spec.id if spec else None) == expected


def test_curated_hub_models_are_not_offline_without_cache(checkpoints):
    spec = registry.get_spec("nvidia/segformer-b0-finetuned-ade-512-512")
    assert hub.is_available_offline(spec) is False
    assert hub.is_available_offline(registry.get_spec("local/seg")) is True


# --------------------------------------------------------------------------- loading and cache


def test_load_local_model(checkpoints):
    loaded = load_model("local/m2f")
    assert loaded.model_type == "mask2former"
    assert loaded.tasks == (Task.SEMANTIC, Task.INSTANCE, Task.PANOPTIC)
    assert loaded.id2label == {0: "sky", 1: "road", 2: "car", 3: "person"}
    assert loaded.device in ("cpu", "cuda")
    assert load_model("local/m2f") is loaded  # cached


def test_semantic_model_refuses_instance_listing_its_tasks(checkpoints):
    loaded = load_model("local/seg")
    with pytest.raises(
        UnsupportedTaskError, match=r"local/seg cannot do instance .*supports: semantic$"
    ):
        loaded.check_task("instance")


@pytest.mark.parametrize("size", [1, 2])
def test_cache_is_bounded_lru(checkpoints, monkeypatch, size):
    monkeypatch.setenv("SEGDEMO_MODEL_CACHE", str(size))
    load_model("local/seg")
    load_model("local/m2f")
    load_model("local/seg")  # seg is now the most recently used
    load_model("local/segdemo-camvid")
    expected = ["local/seg", "local/segdemo-camvid"][-size:]
    assert models.cached_model_ids() == expected


def test_concurrent_first_loads_load_once(checkpoints, monkeypatch):
    calls = []
    real = models.load_checkpoint

    def slow_load(folder, **kwargs):
        calls.append(folder)
        time.sleep(0.3)  # keep the other threads waiting on the same first load
        return real(folder, **kwargs)

    monkeypatch.setattr(models, "load_checkpoint", slow_load)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(load_model("local/seg"))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert len(results) == 4 and all(r is results[0] for r in results)


def test_a_broken_folder_is_skipped_with_one_warning_per_process(checkpoints, caplog):
    broken = checkpoints / "broken"
    shutil.copytree(checkpoints / "seg", broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps(config | {"model_type": "no-such-model"}))
    with caplog.at_level("WARNING", logger="segdemo.registry"):
        for _ in range(3):  # discovery runs on every request
            ids = [spec.id for spec in registry.discover_local()]
            assert "local/broken" not in ids and "local/seg" in ids
    warnings = [r for r in caplog.records if "skipping checkpoint" in r.getMessage()]
    assert len(warnings) == 1 and "broken" in warnings[0].getMessage()


def test_failed_load_is_not_cached(checkpoints):
    weights = checkpoints / "seg" / "model.safetensors"
    saved = weights.read_bytes()
    weights.write_bytes(saved[:100])
    with pytest.raises(ModelLoadError, match=r"^local/seg: .*corrupt or truncated") as info:
        load_model("local/seg")
    assert str(checkpoints) not in str(info.value)  # no server paths for API callers
    assert models.cached_model_ids() == []
    weights.write_bytes(saved)  # fixed: the next request loads it
    assert load_model("local/seg").model_type == "segformer"


def test_retrained_local_checkpoint_is_reloaded(checkpoints, tiny):
    first = load_model("local/seg")
    shutil.rmtree(checkpoints / "seg")
    shutil.copytree(tiny["camvid"], checkpoints / "seg")  # training saved a new best
    second = load_model("local/seg")
    assert second is not first and len(second.id2label) == 11


# --------------------------------------------------------------------------- hub ids (subprocess)

HUB_SCRIPT = """
import json, sys, time
from segdemo import hub, registry
from segdemo.models import ModelLoadError, load_model
out = {}
spec = registry.get_spec(sys.argv[1])
out["offline_before"] = hub.is_available_offline(spec)
loaded = load_model(sys.argv[1])
out["model_type"] = loaded.model_type
out["folder_in_cache"] = str(loaded.model.name_or_path)
start = time.perf_counter()
try:
    load_model(sys.argv[2])
except ModelLoadError as err:
    out["error"] = str(err)
out["fail_seconds"] = time.perf_counter() - start
print(json.dumps(out))
"""


@pytest.mark.parametrize(
    "offline_env",
    [
        {"HF_HUB_OFFLINE": "1"},
        # not told to be offline, but the hub does not answer (closed local port)
        {"HF_HUB_OFFLINE": None, "HF_ENDPOINT": "http://127.0.0.1:9"},
    ],
    ids=["HF_HUB_OFFLINE", "unreachable"],
)
def test_hub_id_through_hand_built_cache_and_fast_failure(tmp_path, tiny, offline_env):
    from tests.builders import make_hf_cache

    cache = tmp_path / "hub"
    cached_id, missing_id = (
        "nvidia/segformer-b0-finetuned-ade-512-512",
        "facebook/mask2former-swin-tiny-coco-panoptic",
    )
    make_hf_cache(cache, cached_id, tiny["segformer"])
    env = dict(
        os.environ,
        HF_HUB_CACHE=str(cache),
        SEGDEMO_CHECKPOINTS=str(tmp_path / "none"),
        PYTHONPATH=str(ROOT),
    )
    for key, value in offline_env.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    run = subprocess.run(
        [sys.executable, "-c", HUB_SCRIPT, cached_id, missing_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["offline_before"] is True
    assert out["model_type"] == "segformer"
    assert out["folder_in_cache"].startswith(
        str(cache / "models--nvidia--segformer-b0-finetuned-ade-512-512")
    )
    message = out["error"]
    assert missing_id in message
    assert "connect to the network" in message
    assert "copy a checkpoint into the checkpoints folder (SEGDEMO_CHECKPOINTS" in message
    assert str(tmp_path) not in message  # no server paths for API callers
    assert out["fail_seconds"] < 2.0


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        # on a Space the curated hub model is preselected, decided without any request
        (
            {"SPACE_ID": "someone/segdemo", "HF_HUB_OFFLINE": ""},
            "nvidia/segformer-b0-finetuned-ade-512-512",
        ),
        (
            {"SEGDEMO_PREFER_HUB": "1", "HF_HUB_OFFLINE": ""},
            "nvidia/segformer-b0-finetuned-ade-512-512",
        ),
        # HF_HUB_OFFLINE wins over SPACE_ID
        ({"SPACE_ID": "someone/segdemo", "HF_HUB_OFFLINE": "1"}, "local/segdemo-camvid"),
        # a local run with network access still starts on the embedded model
        ({"HF_HUB_OFFLINE": ""}, "local/segdemo-camvid"),
    ],
)
def test_default_model_never_probes_the_hub(checkpoints, monkeypatch, env, expected):
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("SEGDEMO_PREFER_HUB", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(hub, "_probe", lambda: pytest.fail("default_model sent a request"))
    assert service.default_model(Task.SEMANTIC).id == expected
