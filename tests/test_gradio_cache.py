"""app.write_image_cache_atomically: gradio's output-image cache without torn files.

Two requests with the same output image share one content-hashed cache file; gradio 6.31
rewrites it in place, so a reader could see it truncated (docs/robustness.md). The patched
writer must return the same path and bytes as gradio's and never expose a partial file.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from gradio import processing_utils
from PIL import Image

import app

ORIGINAL = processing_utils.save_pil_to_cache


@pytest.fixture
def patched(monkeypatch):
    monkeypatch.setattr(processing_utils, "save_pil_to_cache", ORIGINAL)
    app.write_image_cache_atomically()
    assert processing_utils.save_pil_to_cache is not ORIGINAL
    return processing_utils.save_pil_to_cache


def noise_image(size: int = 256) -> Image.Image:
    """Incompressible pixels, so a write takes long enough for a reader to catch it."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def short_reads(
    save, cache_dir: Path, seconds: float = 1.5, *, until_first: bool = False
) -> tuple[int, int]:
    """(short reads, reads) while one thread rewrites the same image and another reads it
    for ``seconds`` (``until_first``: or until the first short read)."""
    image = noise_image()
    path = Path(save(image, str(cache_dir), format="png"))
    expected = path.stat().st_size
    stop = threading.Event()

    def rewrite():
        while not stop.is_set():
            save(image, str(cache_dir), format="png")

    writer = threading.Thread(target=rewrite)
    writer.start()
    short = reads = 0
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    try:
        while not stop.is_set():
            try:
                short += len(path.read_bytes()) != expected
            except FileNotFoundError:  # never expected: counts as a torn read
                short += 1
            reads += 1
            if until_first and short:
                stop.set()
    finally:
        stop.set()
        timer.cancel()
        writer.join()
    return short, reads


def test_same_path_bytes_and_mode_as_gradio(patched, tmp_path):
    image = noise_image(32)
    want = Path(ORIGINAL(image, str(tmp_path / "gradio"), name="mask", format="png"))
    got = Path(patched(image, str(tmp_path / "ours"), name="mask", format="png"))
    assert got.relative_to(tmp_path / "ours") == want.relative_to(tmp_path / "gradio")
    assert got.read_bytes() == want.read_bytes()
    assert got.stat().st_mode & 0o777 == 0o644  # readable like write_bytes under umask 022
    assert [p.name for p in got.parent.iterdir()] == ["mask.png"]  # no temp file left


def test_patch_is_idempotent(patched):
    app.write_image_cache_atomically()
    assert processing_utils.save_pil_to_cache is patched


def test_create_app_installs_it(monkeypatch):
    monkeypatch.setattr(processing_utils, "save_pil_to_cache", ORIGINAL)
    app.create_app()
    assert getattr(processing_utils.save_pil_to_cache, "segdemo_atomic", False)


def test_a_reader_never_sees_a_partial_file(patched, tmp_path):
    short, reads = short_reads(patched, tmp_path)
    assert reads > 100
    assert short == 0


def test_gradio_own_writer_still_tears_files(tmp_path):
    """The positive control of the test above: the same reader does catch gradio's own
    writer mid-write (the upstream bug the patch works around), so ``short == 0`` there
    means something. When this fails, gradio writes atomically now: drop the patch."""
    short, reads = short_reads(ORIGINAL, tmp_path, seconds=10.0, until_first=True)
    assert short > 0, f"no torn read in {reads}: gradio may write atomically now"
