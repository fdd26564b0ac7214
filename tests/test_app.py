"""app.py end to end: the launched app, called through gradio_client over loopback.

Tiny random-init checkpoints (tests/builders.py) are the only models; the hub is
never contacted (HF_HUB_OFFLINE=1 from conftest).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.builders import DEFAULT_ID2LABEL, build_tiny

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

SEMANTIC_ID = "local/app-segformer"
UNIVERSAL_ID = "local/app-mask2former"
NAMES = set(DEFAULT_ID2LABEL.values())
PHOTO_SIZE = (120, 80)  # width, height


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_app(checkpoints: Path, scratch: Path, env: dict[str, str] | None = None):
    """The app on a free loopback port, discovering models in ``checkpoints``, with extra
    environment ``env`` while it is built; yields the Blocks.

    The system temp dir is ``scratch`` meanwhile: the app writes its downloads there,
    and gradio_client leaves an empty folder there for every file it downloads.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(scratch))
        mp.setenv("SEGDEMO_CHECKPOINTS", str(checkpoints))
        mp.delenv("SEGDEMO_ALLOW_ANY_MODEL", raising=False)
        for name, value in (env or {}).items():
            mp.setenv(name, value)
        import app

        demo = app.create_app()
        demo.launch(
            prevent_thread_lock=True,
            server_name="127.0.0.1",
            server_port=_free_port(),
            quiet=True,
            **app.launch_kwargs(),
        )
        try:
            yield demo
        finally:
            demo.close()


def build_models(root: Path) -> Path:
    """The two tiny checkpoints the app tests use: ``local/app-segformer``, ``local/app-mask2former``."""
    build_tiny("segformer", root / "app-segformer")
    build_tiny("mask2former", root / "app-mask2former")
    return root


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """(demo, client, files): the app with two tiny local models, and a gradio_client for it."""
    root = build_models(tmp_path_factory.mktemp("app-checkpoints"))
    files = tmp_path_factory.mktemp("app-files")
    with serve_app(root, files) as demo:
        yield demo, Client(demo.local_url, verbose=False, download_files=str(files)), files


@pytest.fixture(scope="module")
def photo(launched) -> str:
    _, _, files = launched
    width, height = PHOTO_SIZE
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 2, y * 3, (x + y) % 256], axis=-1).astype(np.uint8)
    path = files / "photo.png"
    Image.fromarray(rgb).save(path)
    return str(path)


def _check_task_outputs(outputs, task: str, opacity: float) -> None:
    update, overlay, table, label_map, segments_json = outputs
    width, height = PHOTO_SIZE
    # the annotated image comes as a component update: its colours change per request
    annotated, color_map = update["value"], update["color_map"]
    with Image.open(annotated["image"]) as base:
        assert base.size == PHOTO_SIZE
    labels = [a["label"] for a in annotated["annotations"]]
    assert labels, "the tiny model should find at least one region"
    for annotation in annotated["annotations"]:
        with Image.open(annotation["image"]) as mask:
            assert mask.size == PHOTO_SIZE and mask.mode == "RGBA"
            # drawn at the chosen opacity (a uint8 0/255 mask would come out invisible)
            assert abs(int(np.asarray(mask)[..., 3].max()) - 255 * opacity) <= 1
    assert set(color_map) == set(labels)
    assert all(re.fullmatch(r"#[0-9a-f]{6}", color) for color in color_map.values())
    assert {label.rsplit(" ", 1)[0] if label[-1].isdigit() else label for label in labels} <= NAMES
    with Image.open(overlay) as image:
        assert image.height == height and image.width >= width
    assert table["headers"] == ["label", "score", "area %"]
    assert [row[0] for row in table["data"]] == labels
    label_ids = np.asarray(Image.open(label_map))
    assert label_ids.shape == (height, width)
    summary = json.loads(Path(segments_json).read_text())
    assert summary["task"] == task and sum(s["area"] > 0 for s in summary["segments"]) == len(
        labels
    )
    assert set(np.unique(label_ids)) - {0} <= {s["id"] for s in summary["segments"]}


@pytest.mark.parametrize(
    "api_name, args",
    [
        ("/semantic", (SEMANTIC_ID, 0.5)),  # model, opacity
        ("/semantic", (UNIVERSAL_ID, 0.3)),  # the universal model's semantic head
        # score/mask/overlap thresholds at 0 so the random model's queries survive
        ("/instance", (UNIVERSAL_ID, 0.0, 0.0, 0.0, 0.8)),
        ("/panoptic", (UNIVERSAL_ID, 0.0, 0.0, 0.0, 0.5)),
    ],
)
def test_task_endpoints(launched, photo, api_name, args):
    _, client, _ = launched
    outputs = client.predict(handle_file(photo), *args, api_name=api_name)
    _check_task_outputs(outputs, api_name.strip("/"), args[-1])


@pytest.mark.parametrize(
    "api_name, model_id, thresholds",
    [
        ("/semantic", SEMANTIC_ID, ()),
        ("/instance", UNIVERSAL_ID, (0.0, 0.0, 0.0)),  # score, mask, overlap thresholds
        ("/panoptic", UNIVERSAL_ID, (0.0, 0.0, 0.0)),
    ],
)
def test_downloaded_label_map_equals_segment(launched, photo, api_name, model_id, thresholds):
    """The label map a caller downloads is ``segment()`` on the same upload and model."""
    from segdemo.images import load_image
    from segdemo.models import load_model
    from segdemo.segment import segment

    _, client, _ = launched
    outputs = client.predict(handle_file(photo), model_id, *thresholds, 0.5, api_name=api_name)
    names = ("threshold", "mask_threshold", "overlap_mask_area_threshold")
    expected = segment(
        load_model(model_id),
        load_image(photo),
        api_name.strip("/"),
        **dict(zip(names, thresholds, strict=False)),
    )
    # a comparison worth making: at least two classes / two non-empty segments (0 = none)
    present = set(np.unique(expected.label_map)) - ({0} if api_name != "/semantic" else set())
    assert len(present) >= 2
    with Image.open(outputs[3]) as downloaded:
        np.testing.assert_array_equal(np.asarray(downloaded), expected.label_map)


@pytest.mark.parametrize("tta", ["flip", "multiscale"])
def test_semantic_endpoint_takes_test_time_augmentation(launched, photo, tta):
    """The app's TTA choice reaches ``segment(..., tta=...)`` (unknown values: test_service)."""
    from segdemo.images import load_image
    from segdemo.models import load_model
    from segdemo.segment import segment

    _, client, _ = launched
    outputs = client.predict(handle_file(photo), SEMANTIC_ID, 0.5, tta, api_name="/semantic")
    expected = segment(load_model(SEMANTIC_ID), load_image(photo), "semantic", tta=tta)
    with Image.open(outputs[3]) as downloaded:
        np.testing.assert_array_equal(np.asarray(downloaded), expected.label_map)


def test_compare_endpoint_notes_a_missing_model(launched, photo):
    _, client, _ = launched
    sem, sem_note, inst, inst_note, pan, pan_note = client.predict(
        handle_file(photo), SEMANTIC_ID, "", UNIVERSAL_ID, 0.5, api_name="/compare"
    )
    for image in (sem, pan):
        with Image.open(image) as shown:
            assert shown.height == PHOTO_SIZE[1]
    assert inst is None and "No instance model" in inst_note
    assert SEMANTIC_ID in sem_note and UNIVERSAL_ID in pan_note


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _encode(image: Image.Image, format: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **params)
    return buffer.getvalue()


def _jpeg_bytes() -> bytes:
    rgb = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    return _encode(Image.fromarray(rgb), "JPEG", quality=90)


def _png_bytes(width: int, height: int, mode: str = "RGB") -> bytes:
    return _encode(Image.new(mode, (width, height)), "PNG")


def _exif_rotated_jpeg() -> bytes:
    """Stored 40x20; EXIF orientation 6 says "rotate 90 degrees" -> shown 20x40."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(Image.new("RGB", (40, 20), (200, 30, 30)), "JPEG", exif=exif)


def _palette_with_transparency() -> bytes:
    image = Image.new("P", (30, 20), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    return _encode(image, "PNG", transparency=0)


def _animated_gif() -> bytes:
    frames = [Image.new("P", (24, 16), i) for i in range(3)]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def _grey16() -> bytes:
    ramp = (np.arange(16 * 24, dtype=np.uint16).reshape(16, 24) * 150).astype(np.uint16)
    return _encode(Image.fromarray(ramp), "PNG")


@pytest.mark.parametrize(
    "name, make, size",
    [
        ("dot.png", lambda: _png_bytes(1, 1), (1, 1)),  # a single pixel still segments
        ("grey16.png", _grey16, (24, 16)),  # 16-bit grey, stretched to 8 bits
        (
            "cmyk.jpg",
            lambda: _encode(Image.new("CMYK", (30, 20), (0, 50, 200, 0)), "JPEG"),
            (30, 20),
        ),
        ("palette.png", _palette_with_transparency, (30, 20)),  # P with a transparent index
        ("rgba.png", lambda: _png_bytes(30, 20, "RGBA"), (30, 20)),  # alpha on white
        ("la.png", lambda: _png_bytes(30, 20, "LA"), (30, 20)),  # grey + alpha
        ("rotated.jpg", _exif_rotated_jpeg, (20, 40)),  # EXIF orientation applied
        ("animated.gif", _animated_gif, (24, 16)),  # first frame
    ],
)
def test_unusual_but_valid_uploads_are_segmented(launched, name, make, size):
    """Each result is at the size the picture is shown at: (width, height)."""
    _, client, files = launched
    upload = _write(files / name, make())
    _, _, table, label_map, _ = client.predict(
        handle_file(upload), SEMANTIC_ID, 0.5, api_name="/semantic"
    )
    with Image.open(label_map) as ids:
        assert ids.size == size
    assert sum(row[2] for row in table["data"]) == pytest.approx(100, abs=0.1)


@pytest.mark.parametrize(
    "name, make, model_id, words",
    [
        ("notes.png", lambda p: b"these bytes are not an image", SEMANTIC_ID, "not an image"),
        ("empty.png", lambda p: b"", SEMANTIC_ID, "empty"),
        # the first 600 bytes of a real JPEG: header fine, data cut off
        ("cut.jpg", lambda p: _jpeg_bytes()[:600], SEMANTIC_ID, "truncated"),
        ("strip.png", lambda p: _png_bytes(4000, 8), SEMANTIC_ID, "elongated"),
        # 64 megapixels of 1-bit PNG: a few kB on disk, over the 50 MP limit once decoded
        ("bomb.png", lambda p: _png_bytes(8000, 8000, "1"), SEMANTIC_ID, "too large"),
        ("ok.png", lambda p: Path(p).read_bytes(), "facebook/not-offered", "not offered"),
        ("ok.png", lambda p: Path(p).read_bytes(), "/etc", "not offered"),
    ],
)
def test_bad_requests_show_an_error_and_the_app_keeps_serving(
    launched, photo, name, make, model_id, words
):
    _, client, files = launched
    bad = _write(files / name, make(photo))
    with pytest.raises(AppError, match=words) as info:
        client.predict(handle_file(bad), model_id, 0.5, api_name="/semantic")
    if model_id == SEMANTIC_ID:
        assert name in str(info.value)  # the message names the file the person uploaded
    outputs = client.predict(handle_file(photo), SEMANTIC_ID, 0.5, api_name="/semantic")
    _check_task_outputs(outputs, "semantic", 0.5)


def test_uploads_over_the_size_cap_are_refused(launched, photo):
    _, client, files = launched
    huge = files / "huge.png"
    with huge.open("wb") as f:
        f.truncate(21 * 1024 * 1024)  # sparse: just over the 20 MB cap
    # gradio_client reads the cap the app advertises and refuses before sending (the
    # server's own HTTP 413 for a raw upload is in test_security.py)
    with pytest.raises(ValueError, match="exceeds the maximum file size of 20971520 bytes"):
        client.predict(handle_file(str(huge)), SEMANTIC_ID, 0.5, api_name="/semantic")
    outputs = client.predict(handle_file(photo), SEMANTIC_ID, 0.5, api_name="/semantic")
    _check_task_outputs(outputs, "semantic", 0.5)


@pytest.mark.parametrize(
    "path",
    [
        "/etc/hostname",  # a server file
        str(Path(__file__).resolve().parents[1] / "examples" / "ade_val_00000001.jpg"),  # even ours
    ],
)
def test_api_cannot_name_server_files(launched, path):
    """A raw API call may only point at files uploaded to gradio, not at paths on the server."""
    import httpx

    demo, _, _ = launched
    base = demo.local_url.rstrip("/") + "/gradio_api/call/semantic"
    payload = {"path": path, "meta": {"_type": "gradio.FileData"}}
    started = httpx.post(base, json={"data": [payload, SEMANTIC_ID, 0.5]}, timeout=30)
    started.raise_for_status()
    events = httpx.get(f"{base}/{started.json()['event_id']}", timeout=60).text
    assert "event: error" in events and "event: complete" not in events


def test_a_full_queue_refuses_with_a_message(tmp_path, photo, monkeypatch):
    """Queue of 1 and one worker: of four simultaneous requests one runs, one waits, the
    others are refused at once with gradio's "queue is full" message."""
    import app

    run_task = app.service.run_task

    def slow_run_task(*args, **kwargs):
        time.sleep(2)  # hold the worker so the queue fills up
        return run_task(*args, **kwargs)

    monkeypatch.setattr(app.service, "run_task", slow_run_task)
    root = build_models(tmp_path / "checkpoints")
    env = {"SEGDEMO_QUEUE_SIZE": "1", "SEGDEMO_CONCURRENCY": "1"}
    with serve_app(root, tmp_path, env) as demo:
        client = Client(demo.local_url, verbose=False, download_files=str(tmp_path))
        jobs = [
            client.submit(handle_file(photo), SEMANTIC_ID, 0.5, api_name="/semantic")
            for _ in range(4)
        ]
        outcomes = []
        for job in jobs:
            try:
                outcomes.append(job.result(timeout=60))
            except Exception as err:
                outcomes.append(err)
    refused = [o for o in outcomes if isinstance(o, Exception)]
    served = [o for o in outcomes if not isinstance(o, Exception)]
    assert served and refused, outcomes
    assert all(re.search(r"(?i)queue.*full", str(err)) for err in refused), refused
    for outputs in served:
        _check_task_outputs(outputs, "semantic", 0.5)


def test_app_wiring(launched):
    demo, _, _ = launched
    config = demo.config
    endpoints = {fn.api_name: fn for fn in demo.fns.values()}
    for name in ("semantic", "instance", "panoptic", "compare"):
        # all inference shares one concurrency group, so tabs cannot oversubscribe the CPU
        assert endpoints[name].concurrency_id == "inference"
    by_elem = {c["props"].get("elem_id"): c["props"] for c in config["components"]}
    semantic_choices = [choice[1] for choice in by_elem["semantic-model"]["choices"]]
    instance_choices = [choice[1] for choice in by_elem["instance-model"]["choices"]]
    assert {SEMANTIC_ID, UNIVERSAL_ID} <= set(semantic_choices)
    assert UNIVERSAL_ID in instance_choices and SEMANTIC_ID not in instance_choices
    assert by_elem["instance-model"]["value"] == UNIVERSAL_ID  # offline: first local model
    assert demo._queue.max_size is not None  # a full queue refuses instead of growing


def test_default_concurrency_and_queue_are_the_documented_ones(tmp_path, monkeypatch):
    """README: one inference at a time across all tabs, up to 32 requests waiting."""
    import app

    for name in ("SEGDEMO_CONCURRENCY", "SEGDEMO_QUEUE_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SEGDEMO_CHECKPOINTS", str(build_models(tmp_path / "checkpoints")))
    demo = app.create_app()
    assert demo._queue.max_size == 32
    endpoints = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name}
    for name in ("semantic", "instance", "panoptic", "compare"):
        assert endpoints[name].concurrency_limit == 1, name
        assert endpoints[name].concurrency_id == "inference"  # one limit shared by all tabs


def test_creating_the_app_loads_no_model(launched):
    import app
    from segdemo import models

    models.clear_cache()
    app.create_app()
    assert models.cached_model_ids() == []
