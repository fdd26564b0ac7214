"""Instance and panoptic post-processing at full resolution (segdemo.universal_post and
segdemo.mask_bands): the same answers as transformers' pipeline / image processors, at
every threshold, on odd sizes and with real query counts, in a fixed memory budget."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from segdemo import mask_bands, models
from segdemo.mask_bands import upsampled_winners
from segdemo.models import load_model
from segdemo.result import Task
from segdemo.segment import _forward, _image_processor, segment
from segdemo.universal_post import post_process
from tests.builders import UNIVERSAL_FAMILIES, build_tiny

ZERO = {"threshold": 0.0, "mask_threshold": 0.0, "overlap_mask_area_threshold": 0.0}
DEFAULT: dict = {}  # the pipeline's and segment()'s own defaults (0.9 / 0.5 / 0.5)
MIDDLE = {"threshold": 0.5, "mask_threshold": 0.4, "overlap_mask_area_threshold": 0.4}
THRESHOLDS = {"zero": ZERO, "default": DEFAULT, "middle": MIDDLE}


def _decisive(folder) -> None:
    """Make a tiny random model's answers confident and its masks sparse, so that the
    default thresholds (score > 0.9, mask >= 0.5, half the mask kept) leave segments.

    Class logits x4 (scores near 1); mask logits x3 and shifted by -10 through a constant
    feature channel (channel 0 of the pixel embeddings is 10, its query weight -1), so
    each query covers a part of the image instead of half of it, and overlaps are small.
    """
    from transformers import AutoModelForUniversalSegmentation

    model = AutoModelForUniversalSegmentation.from_pretrained(folder)
    width = model.config.num_labels + 1
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.out_features == width:
                module.weight.mul_(4.0)
                module.bias.mul_(4.0)
        embedder = next(
            m for n, m in model.named_modules() if n.endswith(("mask_embedder", "mask_embed"))
        )
        last = [layer for layer in embedder.modules() if isinstance(layer, torch.nn.Linear)][-1]
        last.weight.mul_(3.0)
        last.bias.mul_(3.0)
        projection = model.model.pixel_level_module.decoder.mask_projection
        projection.weight[0] = 0.0
        projection.bias[0] = 10.0
        last.weight[0] = 0.0
        last.bias[0] = -1.0
    model.save_pretrained(folder)


# name -> (family, queries): 8 is the builders' tiny size; 100 and 200 are Mask2Former's
# COCO and Cityscapes query counts (with the tiny hidden size)
MODELS = {family: (family, None) for family in UNIVERSAL_FAMILIES} | {
    f"{family}-q100": (family, 100) for family in UNIVERSAL_FAMILIES
}
MODELS["mask2former-q200"] = ("mask2former", 200)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("universal-checkpoints")
    for name, (family, queries) in MODELS.items():
        _decisive(build_tiny(family, root / name, num_queries=queries))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGDEMO_CHECKPOINTS", str(root))
        patch.setenv("SEGDEMO_MODEL_CACHE", "1")
        models.clear_cache()
        yield root
        models.clear_cache()


def _photo(height: int, width: int) -> Image.Image:
    """Smooth structure and noise, deterministic."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 3, y * 5, (x + y) * 2], axis=-1) % 256
    noise = rng.integers(0, 60, size=(height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


PHOTOS = {"48x80": _photo(48, 80), "333x517": _photo(333, 517)}


@pytest.fixture()
def torchvision_free_oneformer(monkeypatch):
    """Let the library's OneFormer post-processor run without torchvision: its
    ``tvF.resize`` of float masks is ``F.interpolate(bilinear, antialias=True)``, identity
    at equal size (torchvision's documented behaviour); the rest is the library's."""
    import transformers.models.oneformer.image_processing_pil_oneformer as module

    def resize(masks, size, interpolation=None):
        if tuple(masks.shape[-2:]) == tuple(size):
            return masks
        return F.interpolate(masks, size=size, mode="bilinear", align_corners=False, antialias=True)

    shim = types.SimpleNamespace(
        resize=resize, InterpolationMode=types.SimpleNamespace(BILINEAR="bilinear")
    )
    monkeypatch.setattr(module, "tvF", shim, raising=False)


def _pipeline(loaded):
    from transformers import pipeline

    processor = loaded.processor
    return pipeline(
        "image-segmentation",
        model=loaded.model,
        image_processor=getattr(processor, "image_processor", processor),
        tokenizer=getattr(processor, "tokenizer", None),
        device=loaded.device,
    )


# --------------------------------------------------------------------------- parity


def _grid():
    rows = []
    for family in UNIVERSAL_FAMILIES:
        for task in ("instance", "panoptic"):
            for thresholds in THRESHOLDS:
                for photo in PHOTOS:
                    # 8 tiny queries rarely reach Mask2Former's instance score of 0.9
                    name = f"{family}-q100" if (family, task, thresholds) == (
                        "mask2former", "instance", "default"
                    ) else family  # fmt: skip
                    rows.append((name, task, thresholds, photo))
    # real query counts on the odd size (the pipeline holds queries x H x W there)
    rows += [
        ("mask2former-q100", "panoptic", "zero", "333x517"),
        ("mask2former-q100", "panoptic", "default", "333x517"),
        ("maskformer-q100", "panoptic", "zero", "333x517"),
        ("maskformer-q100", "instance", "default", "333x517"),
        ("oneformer-q100", "instance", "zero", "333x517"),
        ("oneformer-q100", "panoptic", "default", "333x517"),
        ("mask2former-q200", "panoptic", "zero", "333x517"),
        ("mask2former-q200", "panoptic", "middle", "333x517"),
        ("mask2former-q200", "instance", "zero", "333x517"),
    ]
    return rows


PARITY = _grid()


@pytest.mark.parametrize("name, task, thresholds, photo", PARITY, ids=["-".join(r) for r in PARITY])
def test_same_as_pipeline(checkpoints, torchvision_free_oneformer, name, task, thresholds, photo):
    loaded = load_model(f"local/{name}")
    image, kwargs = PHOTOS[photo], THRESHOLDS[thresholds]
    expected = _pipeline(loaded)(image, subtask=task, **kwargs)
    result = segment(loaded, image, task, **kwargs)

    assert result.label_map.shape == (image.height, image.width)
    assert result.label_map.dtype == np.int32
    assert [s.id for s in result.segments] == list(range(1, len(expected) + 1))
    assert [(s.label, s.score) for s in result.segments] == [
        (e["label"], e["score"]) for e in expected
    ]
    for seg, ref in zip(result.segments, expected, strict=True):
        np.testing.assert_array_equal(result.mask(seg.id), np.asarray(ref["mask"]) == 255)
    # guard: a row with fewer than two visible segments compares almost nothing
    assert sum(s.area > 0 for s in result.segments) >= 2


def _renumbered(raw: dict) -> tuple[np.ndarray, list[tuple]]:
    """The processor's output as segment() reports it: ids 1..n in order, a raw id's
    pixels going to the last segment that carries it (fused classes repeat theirs)."""
    segmentation = raw["segmentation"].to(torch.int64).numpy()
    lookup = {info["id"]: position for position, info in enumerate(raw["segments_info"], 1)}
    label_map = np.zeros(segmentation.shape, np.int32)
    for raw_id, position in lookup.items():
        label_map[segmentation == raw_id] = position
    infos = [(i["label_id"], i["score"], i["was_fused"]) for i in raw["segments_info"]]
    return label_map, infos


@pytest.mark.parametrize("name", ["mask2former", "maskformer-q100", "oneformer-q100"])
def test_fused_labels_same_as_processor(checkpoints, torchvision_free_oneformer, name):
    """The pipeline passes no label_ids_to_fuse: compare with the processor called directly."""
    loaded = load_model(f"local/{name}")
    image = PHOTOS["333x517"]
    size = (image.height, image.width)
    fuse = {1, 3}  # road, person: the classes these models give most queries
    with torch.inference_mode():
        outputs = _forward(loaded, image, Task.PANOPTIC, None)
    raw = _image_processor(loaded).post_process_panoptic_segmentation(
        outputs, label_ids_to_fuse=fuse, target_sizes=[size], **ZERO
    )[0]
    expected_map, expected_infos = _renumbered(raw)
    label_map, segments = post_process(
        outputs, loaded.model_type, "panoptic", target_size=size, label_ids_to_fuse=fuse, **ZERO
    )
    np.testing.assert_array_equal(label_map, expected_map)
    assert [(s["label_id"], s["score"], s["was_fused"]) for s in segments] == expected_infos
    fused = [s["label_id"] for s in segments if s["was_fused"]]
    assert len(fused) > len(set(fused)), "some class should have fused several queries"
    assert len(np.unique(label_map[label_map > 0])) >= 2


@pytest.mark.parametrize("task", ["instance", "panoptic"])
@pytest.mark.parametrize("name", ["mask2former", "maskformer", "oneformer"])
def test_batched_outputs_by_index(checkpoints, torchvision_free_oneformer, name, task):
    """Training evaluation post-processes a batch: image ``index`` at its own size."""
    loaded = load_model(f"local/{name}")
    processor = _image_processor(loaded)
    images = [PHOTOS["48x80"], PHOTOS["333x517"].crop((0, 0, 301, 211))]
    sizes = [(im.height, im.width) for im in images]
    with torch.inference_mode():
        single = [_forward(loaded, im, Task(task), None) for im in images]
    # one batch of two: stack the per-image outputs (same processed size after padding)
    batch = types.SimpleNamespace(
        class_queries_logits=torch.cat([o.class_queries_logits for o in single]),
        masks_queries_logits=torch.cat(
            [
                F.interpolate(
                    o.masks_queries_logits, size=single[0].masks_queries_logits.shape[-2:]
                )
                for o in single
            ]
        ),
    )
    method = getattr(processor, f"post_process_{task}_segmentation")
    raw = method(batch, target_sizes=sizes, **ZERO)
    for index in (0, 1):
        expected_map, expected_infos = _renumbered(raw[index])
        label_map, segments = post_process(
            batch, loaded.model_type, task, index=index, target_size=sizes[index], **ZERO
        )
        np.testing.assert_array_equal(label_map, expected_map)
        assert [(s["label_id"], s["score"], s["was_fused"]) for s in segments] == expected_infos


def test_unknown_model_type_and_semantic_are_refused():
    outputs = types.SimpleNamespace(class_queries_logits=None, masks_queries_logits=None)
    with pytest.raises(ValueError, match="unknown model type"):
        post_process(outputs, "segformer", "panoptic", target_size=(4, 4))
    with pytest.raises(ValueError, match="instance and panoptic"):
        post_process(outputs, "mask2former", "semantic", target_size=(4, 4))


# --------------------------------------------------------------------------- the banded engine


def _masks(queries: int, height: int, width: int, seed: int, logits: bool = False):
    """Smooth random mask maps (probabilities, or logits when ``logits``)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, queries, max(2, height // 4), max(2, width // 4), generator=generator)
    smooth = 4 * F.interpolate(coarse, size=(height, width), mode="bilinear")[0]
    return smooth if logits else smooth.sigmoid()


def _scores(queries: int, seed: int, low: float = 0.5) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed + 1)
    return low + (1 - low) * torch.rand(queries, generator=generator)


def _reference(planes, plane_of, scores, size, threshold, antialias):
    """transformers' compute_segments on whole tensors."""
    probs = F.interpolate(
        planes[plane_of][None], size=size, mode="bilinear", align_corners=False, antialias=antialias
    )[0]
    probs *= scores.view(-1, 1, 1)
    winner = probs.argmax(0)
    area = torch.bincount(winner.flatten(), minlength=plane_of.numel())
    return winner, area, (probs >= threshold).flatten(1).sum(1)


def _identity(n: int) -> torch.Tensor:
    return torch.arange(n)


def _shared(n: int) -> torch.Tensor:
    """OneFormer instance: the top (query, class) pairs share query maps."""
    return torch.tensor([0, 1, 1, 2, 3, 3, 3, 4, 5, 0, 2, 5])[:n]


# (case, planes, plane_of, scores, output size, mask_threshold, antialias, path or None)
ENGINE = [
    ("probabilities, t=0", _masks(10, 24, 32, 0), _identity(10), _scores(10, 0), (333, 517), 0.0, False, "windows"),
    ("probabilities, t=0.5", _masks(10, 24, 32, 1), _identity(10), _scores(10, 1), (333, 517), 0.5, False, "windows"),
    ("probabilities, t=0.3", _masks(10, 24, 32, 2), _identity(10), _scores(10, 2), (333, 517), 0.3, False, "windows"),
    ("rows shrink, columns grow", _masks(6, 384, 96, 3), _identity(6), _scores(6, 3), (333, 517), 0.3, False, "windows"),
    ("Mask2Former 384 to 12 MP-like", _masks(4, 384, 384, 4), _identity(4), _scores(4, 4), (1200, 1600), 0.4, False, "windows"),
    ("all equal: ties go to query 0", torch.full((5, 8, 8), 0.5), _identity(5), torch.full((5,), 0.7), (150, 170), 0.35, False, "windows"),
    ("one query", _masks(1, 16, 20, 5), _identity(1), _scores(1, 5), (130, 170), 0.6, False, "windows"),
    ("tiny and denormal values", _masks(6, 24, 32, 6) * 1e-40, _identity(6), _scores(6, 6), (200, 260), 0.0, False, "windows"),
    ("antialias, shared maps, logits", _masks(6, 24, 32, 7, logits=True), _shared(12), _scores(12, 7), (333, 517), 0.0, True, "windows"),
    ("antialias, shared maps, t=0.5", _masks(6, 24, 32, 8, logits=True), _shared(12), _scores(12, 8), (333, 517), 0.5, True, "windows"),
    ("antialias probabilities", _masks(7, 16, 16, 9), _identity(7), _scores(7, 9), (48, 80), 0.45, True, "windows"),
    # PyTorch 2.13's CPU kernel for small outputs and antialiased downsampling are not emulated
    ("small output", _masks(8, 16, 16, 10), _identity(8), _scores(8, 10), (48, 80), 0.4, False, "dense"),
    ("antialias downsample", _masks(6, 96, 128, 11), _identity(6), _scores(6, 11), (37, 50), 0.4, True, "dense"),
    ("infinite logit", _masks(4, 16, 16, 12, logits=True).index_put_((torch.tensor([1]), torch.tensor([3]), torch.tensor([4])), torch.tensor(float("inf"))), _identity(4), _scores(4, 12), (150, 170), 0.0, False, "dense"),
]  # fmt: skip


@pytest.mark.parametrize(
    "case, planes, plane_of, scores, size, threshold, antialias, path",
    ENGINE,
    ids=[row[0] for row in ENGINE],
)
def test_engine_equals_whole_tensors(
    monkeypatch, case, planes, plane_of, scores, size, threshold, antialias, path
):
    taken = []
    for name in ("_windows", "_dense"):
        real = getattr(mask_bands, name)
        monkeypatch.setattr(
            mask_bands, name, lambda *a, _r=real, _n=name: taken.append(_n[1:]) or _r(*a)
        )
    winner, area, original = upsampled_winners(
        planes, plane_of, scores, size, threshold, antialias=antialias
    )
    expected = _reference(planes, plane_of, scores, size, threshold, antialias)
    assert winner.dtype == torch.int32 and winner.shape == size
    assert torch.equal(winner.long(), expected[0])
    assert torch.equal(area, expected[1])
    assert torch.equal(original, expected[2])
    assert taken == [path]


@pytest.mark.parametrize("queries", [20, 200])
def test_every_band_fits_its_budget(monkeypatch, queries):
    """Instrumented: every band and block of temporaries stays within budget_bytes, for
    20 or 200 queries, and the answer is still exact."""
    budget = 512 * 1024
    blocks: list[tuple[str, int]] = []
    monkeypatch.setattr(mask_bands, "block_hook", lambda path, size: blocks.append((path, size)))
    planes, scores = _masks(queries, 24, 32, 20), _scores(queries, 20, low=0.6)
    size = (300, 400)  # queries x H x W floats: 9.6 MB (20) and 96 MB (200)
    plane_of = _identity(queries)
    got = upsampled_winners(planes, plane_of, scores, size, 0.45, budget_bytes=budget)
    expected = _reference(planes, plane_of, scores, size, 0.45, False)
    for mine, theirs in zip(got, expected, strict=True):
        assert torch.equal(mine.long(), theirs)
    assert {path for path, _ in blocks} >= {"windows", "fill", "decide", "count"}
    largest = max(size for _, size in blocks)
    assert largest <= budget, f"a block of {largest} bytes exceeds the {budget}-byte budget"


def test_dense_fallback_fits_its_budget(monkeypatch):
    """Where F.interpolate itself is used, a few whole maps at a time within the budget."""
    blocks: list[tuple[str, int]] = []
    monkeypatch.setattr(mask_bands, "block_hook", lambda path, size: blocks.append((path, size)))
    planes, scores = _masks(12, 192, 256, 21), _scores(12, 21)
    size = (96, 128)  # antialiased downsampling: more than two taps, not emulated
    budget = 4 * 96 * 128 * 14  # four maps of the block's ~14 bytes per pixel
    got = upsampled_winners(
        planes, _identity(12), scores, size, 0.4, antialias=True, budget_bytes=budget
    )
    expected = _reference(planes, _identity(12), scores, size, 0.4, True)
    for mine, theirs in zip(got, expected, strict=True):
        assert torch.equal(mine.long(), theirs)
    assert [path for path, _ in blocks] == ["dense"] * 3
    assert max(size for _, size in blocks) <= budget
