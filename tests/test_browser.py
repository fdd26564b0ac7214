"""The app in a real browser: Playwright drives Debian's chromium (never `playwright install`).

Open the page, upload a photo, pick a model, run, see the annotated image and its
legend; a broken upload shows an error and the next run works; switch tab and
repeat with an example thumbnail; save a screenshot. Every request the page makes
must stay on loopback.

Skips when /usr/bin/chromium is missing (``apt-get install chromium``), except under
CI (env ``CI`` set), where a missing browser is a failure.

The README's screenshot comes from the same helpers, with the app's real models:
``HF_HUB_OFFLINE=1 python -m tests.test_browser docs/screenshot.png`` (see :func:`main`;
``--tab panoptic`` for docs/screenshot_panoptic.png).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.builders import DEFAULT_ID2LABEL
from tests.test_app import build_models, serve_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PHOTO = EXAMPLES / "camvid_0016E5_07959.jpg"
NAMES = set(DEFAULT_ID2LABEL.values())
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
TIMEOUT_MS = 90_000  # first run loads the model; CI machines are slow

pytestmark = pytest.mark.browser


def _require_chromium() -> None:
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} not found; install it with `apt-get install chromium`"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def page_and_requests(tmp_path_factory):
    """(page, requests): a chromium page on the app, and every URL it requested."""
    _require_chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    root = build_models(tmp_path_factory.mktemp("browser-checkpoints"))
    requests: list[str] = []
    scratch = tmp_path_factory.mktemp("browser-scratch")
    with serve_app(root, scratch) as demo, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            page.on("request", lambda request: requests.append(request.url))
            page.goto(demo.local_url, wait_until="load")
            page.wait_for_selector("#semantic-run")
            yield page, requests
        finally:
            browser.close()


def _upload(page, tab: str, path: Path, *, preview: bool = True) -> None:
    """Put ``path`` into the tab's image input and wait until the server has it
    (running earlier would send no image); ``preview=False`` for undecodable files."""
    with page.expect_response(lambda response: "/gradio_api/upload" in response.url):
        page.locator(f"#{tab}-image input[type=file]").set_input_files(str(path))
    if preview:
        page.locator(f"#{tab}-image img").first.wait_for(state="visible")


def _pick_example(page, tab: str, file_name: str) -> None:
    """Click the tab's example thumbnail showing ``file_name`` (examples/ is committed)."""
    page.locator(f"#{tab}-tab .gallery-item").filter(
        has=page.locator(f"img[src$='/{file_name}']")
    ).click()
    page.locator(f"#{tab}-image img").first.wait_for(state="visible")


def _pick_model(page, tab: str, title: str) -> None:
    page.locator(f"#{tab}-model input").click()
    page.get_by_role("option", name=title, exact=True).click()
    assert page.locator(f"#{tab}-model input").input_value() == title


def _set_slider(page, elem_id: str, value: float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def _run_and_read_legend(page, tab: str, opacity: float) -> list[str]:
    """Set the opacity, click run, wait for the new annotated image, return its legend.

    Outputs are cached by content, so an identical rerun would leave the page as it
    was; each run gets its own opacity, which changes the mask images' addresses.
    """
    masks = f"#{tab}-annotated img.mask"
    before = [img.get_attribute("src") for img in page.locator(masks).all()]
    _set_slider(page, f"{tab}-opacity", opacity)
    page.locator(f"#{tab}-run").click()
    page.wait_for_function(
        """([selector, before]) => {
            const srcs = [...document.querySelectorAll(selector)].map((img) => img.getAttribute('src'));
            return srcs.length > 0 && srcs.every((src) => !before.includes(src));
        }""",
        arg=[masks, before],
    )
    # the new images are in the page; wait until the browser has decoded every one of them
    # (under load the legend is there before the pictures, and a screenshot shows none)
    page.wait_for_function(
        """(tab) => {
            const imgs = [...document.querySelectorAll(`#${tab}-annotated img, #${tab}-overlay img`)];
            return imgs.length > 1 && imgs.every((img) => img.complete && img.naturalWidth > 0);
        }""",
        arg=tab,
    )
    return [
        text.strip() for text in page.locator(f"#{tab}-annotated .legend-item").all_inner_texts()
    ]


def _class_of(entry: str) -> str:
    return re.sub(r" \d+$", "", entry)  # instances are numbered: "car 2"


def test_segment_in_two_tabs_with_an_error_in_between(page_and_requests, tmp_path):
    page, requests = page_and_requests

    # semantic: upload, pick the SegFormer, run; the legend lists classes of the model
    _upload(page, "semantic", PHOTO)
    _pick_model(page, "semantic", "app-segformer")
    legend = _run_and_read_legend(page, "semantic", 0.5)
    assert legend and {_class_of(entry) for entry in legend} <= NAMES
    table = page.locator("#semantic-table").inner_text()
    assert all(entry in table for entry in legend)  # table and legend list the same regions
    assert page.locator("#semantic-overlay img").count() == 1

    # a truncated JPEG: a visible error naming the file, then the next run works
    broken = tmp_path / "cut.jpg"
    broken.write_bytes(PHOTO.read_bytes()[:2000])
    _upload(page, "semantic", broken, preview=False)
    page.locator("#semantic-run").click()
    error = page.get_by_text(re.compile(r"cut\.jpg: the image data is damaged or truncated"))
    error.first.wait_for(state="visible")
    page.locator(".toast-close").first.click()  # keep the screenshot clear
    _upload(page, "semantic", PHOTO)
    assert _run_and_read_legend(page, "semantic", 0.6)

    # multi-scale test-time augmentation, chosen on the page: the run completes
    page.locator("#semantic-tta").get_by_label("multiscale").check()
    assert _run_and_read_legend(page, "semantic", 0.7)

    # instance: another tab, the universal model; thresholds at 0 so the random model finds objects
    page.get_by_role("tab", name="Instance").click()
    _pick_example(page, "instance", PHOTO.name)
    _pick_model(page, "instance", "app-mask2former")
    _set_slider(page, "instance-threshold", 0)
    page.get_by_text("Mask settings").click()
    _set_slider(page, "instance-mask-threshold", 0)
    _set_slider(page, "instance-overlap", 0)
    legend = _run_and_read_legend(page, "instance", 0.5)
    assert legend and {_class_of(entry) for entry in legend} <= NAMES

    screenshot = Path(os.environ.get("SEGDEMO_SCREENSHOT", tmp_path / "screenshot.png"))
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000

    elsewhere = [url for url in requests if _leaves_machine(url)]
    assert not elsewhere, f"the page requested non-loopback addresses: {elsewhere[:5]}"
    assert requests  # the listener saw the page's own traffic


def _leaves_machine(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about", "chrome", "chrome-extension"):
        return False
    return parts.hostname not in LOOPBACK


def main(argv: list[str] | None = None) -> int:
    """Screenshot a task tab (default: Semantic) after a run on an example, with the models
    the app finds (``checkpoints/`` or ``$SEGDEMO_CHECKPOINTS``), its default model and the
    thresholds the page starts from."""
    import argparse

    from PIL import Image
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(prog="python -m tests.test_browser", description=main.__doc__)
    parser.add_argument("out", type=Path, help="PNG to write, e.g. docs/screenshot.png")
    parser.add_argument("--example", default=PHOTO.name, help="file name in examples/")
    parser.add_argument(
        "--tab", default="semantic", choices=("semantic", "instance", "panoptic"), help="task tab"
    )
    args = parser.parse_args(argv)
    import app

    demo = app.create_app()
    demo.launch(
        prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, **app.launch_kwargs()
    )
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(demo.local_url, wait_until="load")
            page.wait_for_selector("#semantic-run")
            if args.tab != "semantic":
                page.get_by_role("tab", name=args.tab.capitalize()).click()
            _pick_example(page, args.tab, args.example)
            legend = _run_and_read_legend(page, args.tab, 0.5)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
        # 256 colours: a third of the bytes, and the UI and overlay look the same
        with Image.open(args.out) as shot:
            flat = shot.convert("RGB").quantize(
                256, Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
            )
        flat.save(args.out, optimize=True)
    finally:
        demo.close()
    print(f"{args.out}: legend {legend}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
