"""Bad and odd uploads through the launched app, called with gradio_client over loopback.

The table is tests/inputs.py. An unusable upload: the caller gets gradio's error with our
one-line message naming the uploaded file, and the next request is served. A valid but
unusual upload: segmented, and the overlay (opacity 0, one-class model: the decoded
picture except for the class label in the middle) shows it decoded right.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.builders import build_tiny
from tests.inputs import CASES, SMALL_MAX_PIXELS, check_valid, gradient, real_bomb_png, write_case
from tests.test_app import serve_app

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

ONE_CLASS = "local/one-class"
UNIVERSAL = "local/universal"


@pytest.fixture(scope="module")
def app_client(tmp_path_factory):
    """(client, folder for files): the app with a one-class SegFormer and a tiny Mask2Former,
    and the pixel cap lowered to SMALL_MAX_PIXELS for every request."""
    root = tmp_path_factory.mktemp("inputs-app-ckpt")
    build_tiny("segformer", root / "one-class", id2label={0: "scene"})
    build_tiny("mask2former", root / "universal")
    files = tmp_path_factory.mktemp("inputs-app-files")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEGDEMO_MAX_PIXELS", str(SMALL_MAX_PIXELS))
        with serve_app(root, tmp_path_factory.mktemp("inputs-app-scratch")) as demo:
            yield Client(demo.local_url, verbose=False, download_files=str(files)), files


@pytest.fixture(scope="module")
def good(app_client) -> str:
    _, files = app_client
    path = files / "good.png"
    Image.fromarray(gradient()).save(path)
    return str(path)


def _semantic(client: Client, path: str):
    return client.predict(handle_file(path), ONE_CLASS, 0.0, api_name="/semantic")


def _assert_served(client: Client, path: str) -> None:
    annotated, overlay, table, label_map, _ = _semantic(client, path)
    assert table["data"] and Image.open(label_map).size == Image.open(path).size


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_each_upload_gets_its_message_or_is_decoded_right(app_client, good, case):
    client, files = app_client
    path = str(write_case(files / case.id, case))
    if case.expect == "error":
        with pytest.raises(AppError) as info:
            _semantic(client, path)
        message = str(info.value)
        assert message.startswith(f"{case.name}: ") and case.words in message, message
        assert "\n" not in message and "Traceback" not in message
    else:
        annotated, overlay, table, label_map, _ = _semantic(client, path)
        width, height = case.size
        assert Image.open(annotated["value"]["image"]).size == case.size
        assert Image.open(label_map).size == case.size
        shown = np.asarray(Image.open(overlay).convert("RGB"))
        assert shown.shape[0] == height  # the legend strip is appended on the right
        if case.probe_overlay:
            check_valid(case, shown[:height, :width].copy())
    _assert_served(client, good)  # the next request works


def test_a_real_decompression_bomb_upload_is_refused(app_client, good, monkeypatch):
    """8000x8000 declared in an 8 KB PNG, against the default 50 MP cap."""
    client, files = app_client
    monkeypatch.delenv("SEGDEMO_MAX_PIXELS")  # the server runs in this process: default cap
    bomb = files / "bomb.png"
    bomb.write_bytes(real_bomb_png(8000, 8000))
    with pytest.raises(AppError, match=r"^bomb\.png: the image is too large \(over 50,000,000"):
        _semantic(client, str(bomb))
    _assert_served(client, good)


# one row per endpoint: its arguments after the image; each must pass our message through
ENDPOINTS = [
    ("/semantic", (ONE_CLASS, 0.5)),
    ("/instance", (UNIVERSAL, 0.0, 0.0, 0.0, 0.5)),  # thresholds, overlap, opacity
    ("/panoptic", (UNIVERSAL, 0.0, 0.0, 0.0, 0.5)),
    ("/compare", (ONE_CLASS, UNIVERSAL, UNIVERSAL, 0.5)),  # one model per task, opacity
]


@pytest.mark.parametrize("api_name, args", ENDPOINTS, ids=[e[0] for e in ENDPOINTS])
def test_every_endpoint_passes_the_message_to_the_caller(app_client, good, api_name, args):
    client, files = app_client
    truncated = next(c for c in CASES if c.id == "truncated-jpeg")
    path = str(write_case(files / "endpoints", truncated))
    with pytest.raises(AppError, match=r"^cut\.jpg: the image data is damaged or truncated"):
        client.predict(handle_file(path), *args, api_name=api_name)
    outputs = client.predict(handle_file(good), *args, api_name=api_name)
    assert outputs and outputs[1] is not None
