"""segdemo.hub: the one resolver of model names (folder or hub id -> local folder).

The HF cache is a hand-built one (tests.builders.make_hf_cache) under a temp folder;
huggingface_hub reads ``constants.HF_HUB_CACHE`` at each call, so pointing it there is
enough. Nothing touches the network: conftest sets HF_HUB_OFFLINE=1, and the "hub does
not answer" case replaces the probe.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from segdemo import hub
from segdemo.checkpoint import CheckpointError, load_checkpoint
from tests.builders import build_tiny, make_hf_cache

REPO_ID = "someone/tiny-segformer"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny("segformer", tmp_path_factory.mktemp("hub-src") / "seg")


@pytest.fixture()
def hf_cache(tmp_path, monkeypatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.mark.parametrize(
    "value, expected",
    [
        ("1", True),
        ("ON", True),
        ("yes", True),  # case does not matter, as in huggingface_hub
        (" true ", True),
        ("", False),
        ("0", False),
        ("false", False),
        ("no", False),
    ],
)
def test_offline_reads_hf_hub_offline_like_huggingface_hub(monkeypatch, value, expected):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert hub.offline() is expected


def test_a_folder_resolves_to_itself(tiny):
    assert hub.resolve_model_folder(tiny) == tiny
    assert hub.resolve_model_folder(f"  {tiny}  ") == tiny


@pytest.mark.parametrize(
    "name, words",
    [
        ("./no/such/folder", "not a hub id"),  # a path that does not exist
        ("local/absent", "not a hub id"),  # registry ids are not hub ids
        ("nobody/absent-model", "not in the local Hugging Face cache and HF_HUB_OFFLINE is set"),
    ],
)
def test_unavailable_names_fail_fast_in_one_line(hf_cache, name, words):
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        hub.resolve_model_folder(name)
    assert time.perf_counter() - start < 2.0
    message = str(info.value)
    assert message.startswith(f"{name}: ") and words in message and "\n" not in message


def test_a_cached_hub_id_resolves_to_its_snapshot_and_loads(hf_cache, tiny):
    snapshot = make_hf_cache(hf_cache, REPO_ID, tiny)
    folder = hub.resolve_model_folder(REPO_ID)
    assert folder == snapshot.resolve()
    assert hub.cached_snapshot(REPO_ID) == folder
    model, _ = load_checkpoint(folder)
    assert model.config.model_type == "segformer"


def test_offline_a_partial_snapshot_is_returned_for_the_loader_to_judge(hf_cache, tiny):
    """A backbone-only repo (no processor files) is not complete for the app, but training
    starts from such repos: offline the resolver still hands it over."""
    snapshot = make_hf_cache(hf_cache, REPO_ID, tiny)
    (snapshot / "preprocessor_config.json").unlink()
    assert hub.cached_snapshot(REPO_ID) is None
    assert hub.resolve_model_folder(REPO_ID) == snapshot.resolve()
    with pytest.raises(CheckpointError, match="preprocessor_config.json is missing"):
        load_checkpoint(snapshot)


def test_an_unreachable_hub_is_named_in_the_message(hf_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "")
    monkeypatch.setattr(hub, "_probe_cache", None)
    monkeypatch.setattr(hub, "_probe", lambda: False)
    with pytest.raises(CheckpointError, match="the Hugging Face hub is not reachable"):
        hub.resolve_model_folder("nobody/absent-model")


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, False),  # a local run
        ({"SPACE_ID": "me/segdemo"}, True),  # on a Space
        ({"SEGDEMO_PREFER_HUB": "1"}, True),
        ({"SPACE_ID": "me/segdemo", "HF_HUB_OFFLINE": "1"}, False),  # offline wins
    ],
)
def test_prefers_hub_is_decided_from_the_environment(monkeypatch, env, expected):
    for name in ("SPACE_ID", "SEGDEMO_PREFER_HUB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(hub, "_probe", lambda: pytest.fail("prefers_hub sent a request"))
    assert hub.prefers_hub() is expected
