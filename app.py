"""segdemo's Gradio Space: semantic, instance and panoptic segmentation, and a comparison.

Run it with ``python app.py`` (http://127.0.0.1:7860; GRADIO_SERVER_NAME and
GRADIO_SERVER_PORT override host and port). This file only assembles the UI: every
request goes through :mod:`segdemo.service`, and no model is loaded until the first
request that needs it.

API (gradio_client): ``/semantic``, ``/instance``, ``/panoptic``, ``/compare``.
Uploads are capped at :data:`MAX_FILE_SIZE`.

On ZeroGPU hardware (a Space with ``SPACES_ZERO_GPU`` set and the ``spaces`` package
installed) the four handlers run under ``@spaces.GPU`` and each tab's default model is
loaded at start-up (:func:`on_zero_gpu`, :func:`preload_models`); elsewhere nothing
changes and ``spaces`` is not needed.
"""

from __future__ import annotations

import functools
import html
import logging
import os
import tempfile
from pathlib import Path

# before gradio is imported: it reads this once, at import
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def zero_gpu():
    """The ``spaces`` module when this runs on ZeroGPU hardware, else ``None``.

    ZeroGPU Spaces set ``SPACES_ZERO_GPU``; ``spaces`` is installed on Spaces, not needed here.
    """
    if os.environ.get("SPACES_ZERO_GPU", "").strip().lower() not in ("1", "true", "yes"):
        return None
    try:
        import spaces
    except ImportError:
        return None
    return spaces


zero_gpu()  # on ZeroGPU, `spaces` patches torch before anything imports it

import gradio as gr  # noqa: E402

from segdemo import service  # noqa: E402
from segdemo.result import Task  # noqa: E402
from segdemo.tta import TTA_CHOICES  # noqa: E402

log = logging.getLogger("segdemo.app")

MAX_FILE_SIZE = "20mb"
"""Largest upload gradio accepts (checked before any decoding); documented in the README."""

QUEUE_MAX_SIZE = 32
"""Requests that may wait (env ``SEGDEMO_QUEUE_SIZE``); beyond it the queue answers
"queue full" instead of piling up."""

INFERENCE_CONCURRENCY = 1
"""Inference events running at once, across all tabs (env ``SEGDEMO_CONCURRENCY``).
torch already spreads one request over every core, so running two at once mostly
doubles the memory, not the speed."""

CONCURRENCY_ID = "inference"

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"

THEME = gr.themes.Default(
    primary_hue="teal",
    # system fonts only: a page that fetches fonts from a CDN leaks visits and breaks offline
    font=["ui-sans-serif", "system-ui", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "monospace"],
)

DESCRIPTIONS = {
    Task.SEMANTIC: "Every pixel gets a class (road, sky, person...); objects of one class merge into one region.",
    Task.INSTANCE: "Each countable object (every person, every car) gets its own mask and score; background stays empty.",
    Task.PANOPTIC: "Both at once: every pixel belongs to a stuff region (sky, road) or to one numbered thing.",
}


def _upload(value: dict | None) -> tuple[str | None, str | None]:
    """``(path, original file name)`` of an image input's raw value.

    The events run with ``preprocess=False``: gr.Image would open the upload with Pillow
    itself, so a broken file would fail inside gradio with a bare "Error". Undecoded, it
    reaches :func:`segdemo.images.load_image`, which says what is wrong. (gradio still
    checks that the path is one of its own uploads before the function sees it.)
    """
    if not value:
        return None, None
    if not isinstance(value, dict):
        raise service.RequestError("the image must be an uploaded file; upload it first")
    return value.get("path"), value.get("orig_name")


def _setting(name: str, default: int) -> int:
    """A positive integer from the environment, read when the app is built."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValueError(
            f"{name}={value!r} is not a positive integer; unset it or give e.g. {default}"
        )
    return int(value)


def example_images() -> list[str]:
    """Committed example photos (see examples/LICENSE.md), sorted by name."""
    return sorted(str(p) for p in EXAMPLES_DIR.glob("*.jpg"))


def _run(task: Task, image, model_id, options_kwargs: dict, progress: gr.Progress):
    try:
        path, name = _upload(image)
        options = service.Options(**options_kwargs)
        output = service.run_task(
            path, model_id, task, options, service.new_request_dir(), _adapt(progress), name=name
        )
    except service.USER_ERRORS as err:
        raise gr.Error(html.escape(str(err)), print_exception=False) from None
    except Exception as err:
        log.exception("%s request failed", task.value)
        raise gr.Error(
            f"{task.value} segmentation failed unexpectedly ({type(err).__name__}); "
            "the server log has the details"
        ) from None
    return (
        gr.AnnotatedImage(value=(output.image, output.annotations), color_map=output.color_map),
        output.overlay,
        output.table,
        str(output.label_map_png),
        str(output.segments_json),
    )


def _adapt(progress: gr.Progress) -> service.Progress:
    return lambda fraction, description: progress(fraction, desc=description)


PROGRESS = gr.Progress()
"""Default of the handlers' ``progress`` argument: gradio recognises it and routes each
call's updates to that call's event."""


TTA_OFF = "off"
"""The page's and the API's name for no test-time augmentation (``segment(tta=None)``)."""


# One function per endpoint: gradio names the API parameters after these arguments.
def semantic(image, model, opacity, tta=TTA_OFF, progress=PROGRESS):
    """Semantic segmentation: class per pixel (``tta``: "off", "flip" or "multiscale",
    :mod:`segdemo.tta`)."""
    options = {"alpha": opacity, "tta": None if tta in (None, TTA_OFF) else tta}
    return _run(Task.SEMANTIC, image, model, options, progress)


def _mask_task(task: Task, doc: str):
    """Handler of a mask-based task (instance or panoptic): same inputs, its own task."""

    def run(
        image,
        model,
        threshold,
        mask_threshold,
        overlap_mask_area_threshold,
        opacity,
        progress=PROGRESS,
    ):
        options = {
            "threshold": threshold,
            "mask_threshold": mask_threshold,
            "overlap_mask_area_threshold": overlap_mask_area_threshold,
            "alpha": opacity,
        }
        return _run(task, image, model, options, progress)

    run.__name__, run.__doc__ = task.value, doc
    return run


instance = _mask_task(Task.INSTANCE, "Instance segmentation: one scored mask per object.")
panoptic = _mask_task(Task.PANOPTIC, "Panoptic segmentation: stuff regions plus numbered things.")


def compare(image, semantic_model, instance_model, panoptic_model, opacity, progress=PROGRESS):
    """One image through the three tasks; a task without a usable model gets a note."""
    model_ids = {
        Task.SEMANTIC: semantic_model,
        Task.INSTANCE: instance_model,
        Task.PANOPTIC: panoptic_model,
    }
    try:
        path, name = _upload(image)
        outputs = service.run_compare(
            path,
            model_ids,
            service.Options(alpha=opacity),
            service.new_request_dir(),
            _adapt(progress),
            name=name,
            recommended_thresholds=True,  # no sliders here: each model's recommendation
        )
    except service.USER_ERRORS as err:
        raise gr.Error(html.escape(str(err)), print_exception=False) from None
    except Exception as err:
        log.exception("compare request failed")
        raise gr.Error(
            f"comparison failed unexpectedly ({type(err).__name__}); the server log has the details"
        ) from None
    values = []
    for task in model_ids:
        output = outputs[task]
        if isinstance(output, str):
            values += [None, f"**Not run:** {html.escape(output)}"]
        else:
            count = len(output.table)
            plural = "" if count == 1 else "s"
            values += [output.overlay, f"`{html.escape(output.model_id)}`: {count} segment{plural}"]
    return values


def _model_dropdown(task: Task, elem_id: str) -> gr.Dropdown:
    choices = service.model_choices(task)
    return gr.Dropdown(
        choices=choices,
        value=service.default_model_id(task),
        label=f"{task.value.capitalize()} model",
        # typed ids are checked by the service (registry only, unless the operator allows more)
        allow_custom_value=True,
        elem_id=elem_id,
    )


def _no_model_note(task: Task) -> None:
    if service.default_model_id(task) is None:
        gr.Markdown(f"**Note:** {html.escape(service.no_model_message(task))}")


RECOMMENDED_NOTE = "*Thresholds recommended by the model.*"
"""Shown under the sliders while they hold the selected model's recommended thresholds."""


def threshold_settings(model_id: str | None) -> tuple[float, float, float, str]:
    """Slider values and note for ``model_id``: its recommended thresholds (segdemo.json)
    with :data:`RECOMMENDED_NOTE`, else the defaults and no note."""
    start, recommended = service.start_thresholds(model_id)
    note = RECOMMENDED_NOTE if recommended else ""
    return start.threshold, start.mask_threshold, start.overlap_mask_area_threshold, note


def _threshold_sliders(task: Task, model: gr.Dropdown) -> list[gr.Slider]:
    """The three threshold sliders; they start from, and follow, the model's recommendation."""
    threshold, mask_value, overlap_value, note_text = threshold_settings(model.value)
    slider = gr.Slider(
        0, 1, threshold, step=0.05, label="Score threshold", elem_id=f"{task.value}-threshold"
    )
    note = gr.Markdown(note_text, elem_id=f"{task.value}-threshold-note")
    with gr.Accordion("Mask settings", open=False):
        mask_threshold = gr.Slider(
            0,
            1,
            mask_value,
            step=0.05,
            label="Mask threshold",
            elem_id=f"{task.value}-mask-threshold",
        )
        overlap = gr.Slider(
            0,
            1,
            overlap_value,
            step=0.05,
            label="Overlap area threshold",
            elem_id=f"{task.value}-overlap",
        )
    sliders = [slider, mask_threshold, overlap]
    model.change(
        threshold_settings,
        inputs=model,
        outputs=[*sliders, note],
        queue=False,  # reads the registry only: no need to wait behind inference
        show_progress="hidden",
        api_visibility="private",  # a UI convenience, not an endpoint
    )
    return sliders


def _opacity_slider(elem_id: str) -> gr.Slider:
    return gr.Slider(
        0, 1, service.Options().alpha, step=0.05, label="Overlay opacity", elem_id=elem_id
    )


def _image_input(elem_id: str) -> gr.Image:
    return gr.Image(
        type="filepath", sources=["upload", "clipboard", "webcam"], label="Image", elem_id=elem_id
    )


def create_task_tab(task: Task) -> None:
    """One task tab: inputs on the left, annotated image, overlay, table and downloads on the right."""
    name = task.value
    handler = {Task.SEMANTIC: semantic, Task.INSTANCE: instance, Task.PANOPTIC: panoptic}[task]
    handler = on_zero_gpu(handler, task.value)
    with gr.Tab(name.capitalize(), id=name, elem_id=f"{name}-tab"):
        gr.Markdown(DESCRIPTIONS[task])
        with gr.Row():
            with gr.Column(scale=1):
                image = _image_input(f"{name}-image")
                model = _model_dropdown(task, f"{name}-model")
                _no_model_note(task)
                sliders = [] if task is Task.SEMANTIC else _threshold_sliders(task, model)
                extra = []
                if task is Task.SEMANTIC:
                    extra.append(
                        gr.Radio(
                            [TTA_OFF, *TTA_CHOICES],
                            value=TTA_OFF,
                            label="Test-time augmentation",
                            info="flip: averages with the mirror image (2x time); multiscale: "
                            "flip at 1, 1.25 and 1.5x the input size (6x time)",
                            elem_id=f"{name}-tta",
                        )
                    )
                opacity = _opacity_slider(f"{name}-opacity")
                button = gr.Button("Segment", variant="primary", elem_id=f"{name}-run")
                gr.Examples(examples=example_images(), inputs=image, cache_examples=False)
            with gr.Column(scale=2):
                annotated = gr.AnnotatedImage(label="Segments", elem_id=f"{name}-annotated")
                overlay = gr.Image(
                    label="Overlay", interactive=False, format="png", elem_id=f"{name}-overlay"
                )
                table = gr.Dataframe(
                    headers=list(service.TABLE_COLUMNS),
                    datatype=["str", "number", "number"],
                    interactive=False,
                    label="Segments table",
                    elem_id=f"{name}-table",
                )
                with gr.Row():
                    label_map = gr.File(
                        label="Label map (PNG)", height=90, elem_id=f"{name}-labelmap"
                    )
                    segments = gr.File(label="Segments (JSON)", height=90, elem_id=f"{name}-json")
        button.click(
            handler,
            inputs=[image, model, *sliders, opacity, *extra],
            outputs=[annotated, overlay, table, label_map, segments],
            api_name=name,
            concurrency_id=CONCURRENCY_ID,
            concurrency_limit=_setting("SEGDEMO_CONCURRENCY", INFERENCE_CONCURRENCY),
            preprocess=False,  # see _upload
        )


def create_compare_tab() -> None:
    """One image through all three tasks, side by side."""
    with gr.Tab("Compare", id="compare", elem_id="compare-tab"):
        gr.Markdown("One image through semantic, instance and panoptic segmentation, side by side.")
        with gr.Row():
            with gr.Column(scale=2):
                image = _image_input("compare-image")
                gr.Examples(examples=example_images(), inputs=image, cache_examples=False)
            with gr.Column(scale=1):
                models = []
                for task in Task:
                    models.append(_model_dropdown(task, f"compare-{task.value}-model"))
                    _no_model_note(task)
                opacity = _opacity_slider("compare-opacity")
                button = gr.Button("Compare", variant="primary", elem_id="compare-run")
        outputs = []
        with gr.Row():
            for task in Task:
                with gr.Column(min_width=240):
                    outputs.append(
                        gr.Image(
                            label=task.value.capitalize(),
                            interactive=False,
                            format="png",
                            elem_id=f"compare-{task.value}",
                        )
                    )
                    outputs.append(
                        gr.Markdown(
                            label=f"{task.value} note", elem_id=f"compare-{task.value}-note"
                        )
                    )
        button.click(
            on_zero_gpu(compare, "compare"),
            inputs=[image, *models, opacity],
            outputs=outputs,
            api_name="compare",
            concurrency_id=CONCURRENCY_ID,
            concurrency_limit=_setting("SEGDEMO_CONCURRENCY", INFERENCE_CONCURRENCY),
            preprocess=False,  # see _upload
        )


ZERO_GPU_RUN_SECONDS = {Task.SEMANTIC: 20, Task.INSTANCE: 40, Task.PANOPTIC: 40}
"""GPU seconds asked for one inference on ZeroGPU when the model is loaded already: a
12 MP photo through a Mask2Former Swin-L with the post-processing, with room to spare
(shorter requests get a GPU sooner and use less of the visitor's quota)."""

ZERO_GPU_LOAD_SECONDS = 60
"""Added per model that has to be downloaded and loaded inside the call first (any model
but the preloaded defaults)."""


def zero_gpu_seconds(endpoint: str, *args, **kwargs) -> int:
    """``@spaces.GPU`` duration of one call to ``endpoint`` with the handler's arguments:
    :data:`ZERO_GPU_RUN_SECONDS` per task run, plus :data:`ZERO_GPU_LOAD_SECONDS` per
    model not loaded at start-up."""
    from segdemo.models import cached_model_ids

    if endpoint == "compare":  # compare(image, semantic_model, instance_model, panoptic_model, ...)
        chosen = dict(zip(Task, (*args, None, None, None, None)[1:4], strict=True))
        chosen |= {t: kwargs[f"{t.value}_model"] for t in Task if f"{t.value}_model" in kwargs}
    else:  # semantic / instance / panoptic(image, model, ...)
        chosen = {Task(endpoint): kwargs.get("model", args[1] if len(args) > 1 else None)}
    loaded = set(cached_model_ids())
    seconds = [
        ZERO_GPU_RUN_SECONDS[task] + (0 if model in loaded else ZERO_GPU_LOAD_SECONDS)
        for task, model in chosen.items()
        if model
    ]
    return sum(seconds) or ZERO_GPU_RUN_SECONDS[Task.SEMANTIC]


def on_zero_gpu(handler, endpoint: str):
    """``handler`` under ``@spaces.GPU`` on ZeroGPU hardware (a GPU is attached for each
    call, for :func:`zero_gpu_seconds`), else ``handler`` itself."""
    spaces = zero_gpu()
    if spaces is None:
        return handler
    return spaces.GPU(duration=functools.partial(zero_gpu_seconds, endpoint))(handler)


def preload_models() -> list[str]:
    """ZeroGPU: load each tab's default model now, at start-up, as ZeroGPU expects.

    The weights are read into CPU memory in the main process; ZeroGPU's patched torch
    holds their move to ``cuda`` until a handler has a GPU, so requests on the defaults
    spend their GPU time on inference. At most ``SEGDEMO_MODEL_CACHE`` models (the cache
    keeps no more); a model that cannot load is logged and left to the first request.
    Returns the ids loaded.
    """
    from segdemo.errors import SegdemoError
    from segdemo.models import cache_size, load_model

    wanted = list(dict.fromkeys(filter(None, map(service.default_model_id, Task))))
    loaded = []
    for model_id in wanted[: cache_size()]:
        try:
            load_model(model_id)
        except SegdemoError as err:
            log.warning("ZeroGPU start-up: %s", err)
            continue
        loaded.append(model_id)
    log.info("ZeroGPU start-up: loaded %s", ", ".join(loaded) or "no model")
    return loaded


def write_image_cache_atomically() -> None:
    """Make gradio write output images to its cache by temp file + rename (idempotent).

    gradio 6.31's ``processing_utils.save_pil_to_cache`` names an output image by the hash
    of its bytes and rewrites that file in place (truncate, then write) even when it
    exists, so when two requests produce the same image (the same example photo, twice)
    the second rewrite can cut short the first client's download (docs/robustness.md).
    This is the same function with the write made atomic: readers see the old file or the
    new one, never a partial one. gr.Image, gr.AnnotatedImage (base image and every mask)
    and gr.Gallery all call it through the module attribute replaced here.
    """
    from gradio import processing_utils

    if getattr(processing_utils.save_pil_to_cache, "segdemo_atomic", False):
        return

    def save_pil_to_cache(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
        data = processing_utils.encode_pil_to_bytes(img, format)
        folder = Path(cache_dir) / processing_utils.hash_bytes(data)
        folder.mkdir(exist_ok=True, parents=True)
        target = (folder / f"{name}.{format}").resolve()
        fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.chmod(temp, 0o644)  # mkstemp's 0600 -> what write_bytes gives under umask 022
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return str(target)

    save_pil_to_cache.segdemo_atomic = True
    processing_utils.save_pil_to_cache = save_pil_to_cache


def create_app() -> gr.Blocks:
    """Build the UI (no model is loaded, except on ZeroGPU: :func:`preload_models`); local
    checkpoints are discovered now, once."""
    write_image_cache_atomically()
    if zero_gpu() is not None:
        preload_models()
    with gr.Blocks(title="segdemo: image segmentation") as demo:
        gr.Markdown(
            "# segdemo: image segmentation with transformers\n"
            "Upload a photo (or pick an example), choose a model, press **Segment**. "
            f"Uploads up to {MAX_FILE_SIZE.upper()}; models load on first use."
        )
        with gr.Tabs():
            for task in Task:
                create_task_tab(task)
            create_compare_tab()
    demo.queue(
        default_concurrency_limit=_setting("SEGDEMO_CONCURRENCY", INFERENCE_CONCURRENCY),
        max_size=_setting("SEGDEMO_QUEUE_SIZE", QUEUE_MAX_SIZE),
    )
    return demo


def launch_kwargs() -> dict:
    """``Blocks.launch`` settings shared by ``python app.py`` and the tests (gradio 6: theme goes here)."""
    return {"theme": THEME, "max_file_size": MAX_FILE_SIZE}


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    create_app().launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        **launch_kwargs(),
    )


if __name__ == "__main__":
    main()
