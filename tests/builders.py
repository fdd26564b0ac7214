"""Tiny random-init segmentation checkpoints for offline tests.

Every family segdemo supports is built from a config (no download), saved with
``save_pretrained`` together with the image processor it is used with on the hub
(OneFormer also with a CLIP tokenizer and its class-info file), so tests can load
the folder exactly like a real checkpoint.

    >>> path = build_tiny("segformer", tmp_path / "seg", id2label={0: "sky", 1: "road"})

Semantic families: segformer, upernet-convnext, upernet-swin, dpt, beit, mobilevit.
Universal families (semantic + instance + panoptic): mask2former, maskformer, oneformer.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

SEMANTIC_FAMILIES = ("segformer", "upernet-convnext", "upernet-swin", "dpt", "beit", "mobilevit")
UNIVERSAL_FAMILIES = ("mask2former", "maskformer", "oneformer")
FAMILIES = SEMANTIC_FAMILIES + UNIVERSAL_FAMILIES

DEFAULT_ID2LABEL = {0: "sky", 1: "road", 2: "car", 3: "person"}
# panoptic metadata: which of DEFAULT_ID2LABEL are countable things (OneFormer needs it)
THING_NAMES = {"car", "person"}


def build_tiny(
    family: str,
    out_dir: str | os.PathLike,
    id2label: dict[int, str] | None = None,
    image_size: int = 64,
    seed: int = 0,
    num_queries: int | None = None,
) -> Path:
    """Build a tiny random-init model of ``family`` and save it (with its processor) to ``out_dir``.

    Args:
        family: one of :data:`FAMILIES`.
        out_dir: folder to create (replaced if it exists).
        id2label: class names ``{id: name}``, ids ``0..N-1``; default :data:`DEFAULT_ID2LABEL`.
        image_size: the processor's input size (square); models see ``image_size`` pixels.
        seed: torch seed for the random weights (same seed -> same weights).
        num_queries: universal families: queries instead of the tiny 8 (e.g. 100, as
            Mask2Former's COCO models have).

    Returns:
        ``out_dir`` as a Path: ``config.json``, ``model.safetensors``,
        ``preprocessor_config.json`` (+ tokenizer files for OneFormer).
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of: {', '.join(FAMILIES)}")
    id2label = {int(k): v for k, v in (id2label or DEFAULT_ID2LABEL).items()}
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    torch.manual_seed(seed)
    model, processor = _BUILDERS[family](id2label, image_size, out)
    if num_queries is not None:
        model = _with_queries(model, num_queries)
    _diversify(model, len(id2label), universal=family in UNIVERSAL_FAMILIES)
    model.eval()
    _wake_batch_norms(model)
    if family in UNIVERSAL_FAMILIES:
        _spread_masks(model, processor, image_size)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def keep_only_pickle_weights(folder: str | os.PathLike) -> Path:
    """Rewrite a saved checkpoint's weights as ``pytorch_model.bin`` only (the pickle format)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


def make_hf_cache(cache_dir: str | os.PathLike, repo_id: str, model_dir: str | os.PathLike) -> Path:
    """Lay out ``model_dir``'s files as huggingface_hub's cache entry for ``repo_id``.

    Builds ``cache_dir/models--ORG--NAME/refs/main`` (a 40-hex commit) and
    ``snapshots/<commit>/<files>`` (copies, as on systems without symlinks), so
    ``snapshot_download(repo_id, local_files_only=True, cache_dir=cache_dir)`` finds it.
    Point ``HF_HUB_CACHE`` (or ``HF_HOME``/hub) at ``cache_dir`` to use it.

    Returns:
        The snapshot folder.
    """
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_folder = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    (repo_folder / "refs").mkdir(parents=True, exist_ok=True)
    (repo_folder / "refs" / "main").write_text(commit)
    snapshot = repo_folder / "snapshots" / commit
    if snapshot.exists():
        shutil.rmtree(snapshot)
    shutil.copytree(model_dir, snapshot)
    return snapshot


def _diversify(model: torch.nn.Module, num_labels: int, universal: bool) -> None:
    """Make a random model's predictions varied, so tests see many classes and segments.

    Default init gives near-constant logits (one class everywhere) and universal models
    whose queries all pick the "no object" class. The class classifiers (the layers with
    ``num_labels`` outputs, ``num_labels + 1`` for universal models) get large random
    weights, and the "no object" class a low bias.
    """
    width = num_labels + 1 if universal else num_labels
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for module in model.modules():
            out_features = getattr(module, "out_features", getattr(module, "out_channels", None))
            if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) or out_features != width:
                continue
            weight = torch.randn(module.weight.shape, generator=generator)
            module.weight.copy_(weight * 3.0 / module.weight[0].numel() ** 0.5)
            if module.bias is not None:
                module.bias.zero_()
                if universal:
                    module.bias[-1] = -4.0


def _with_queries(model: torch.nn.Module, num_queries: int) -> torch.nn.Module:
    """The same architecture rebuilt with ``num_queries`` object queries."""
    config = model.config
    config.num_queries = num_queries
    if getattr(config, "decoder_config", None) is not None:  # MaskFormer's DETR decoder
        config.decoder_config.num_queries = num_queries
    return type(model)(config)


def _wake_batch_norms(model: torch.nn.Module) -> None:
    """Batch norms initialised with weights ~N(0, 0.02) (MobileViT) scale every activation
    by ~0.02 per layer, so the logits underflow to 0 and one class wins everywhere: give
    those the usual weight 1."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d) and module.weight.abs().max() < 0.1:
                module.weight.fill_(1.0)


def _spread_masks(model: torch.nn.Module, processor, image_size: int) -> None:
    """Give a random universal model distinct queries and masks that vary over the image.

    At default init (1) MaskFormer's and OneFormer's query embeddings are ~N(0, 0.02), so
    every query attends alike and predicts the same class and mask; (2) the per-pixel mask
    features have a large mean, so each mask logit is nearly constant (every mask on, or
    every mask off, everywhere). Then semantic answers are one class and panoptic one
    segment, and a parity test compares almost nothing. Fix: redraw tiny query embeddings
    at a scale where attention differs per query, centre the mask features (the bias of
    ``mask_projection``) on a fixed noise image, and scale the mask embedding's last layer
    so the mask logits vary by about 3 over that image.
    """
    generator = torch.Generator().manual_seed(4321)
    calibration = torch.Generator().manual_seed(7)
    pixels = torch.randint(0, 256, (image_size, image_size, 3), generator=calibration)
    from PIL import Image

    image = Image.fromarray(pixels.to(torch.uint8).numpy())
    if hasattr(processor, "tokenizer"):  # OneFormer: the task is an input
        inputs = processor(images=image, task_inputs=["panoptic"], return_tensors="pt")
    else:
        inputs = processor(images=image, return_tensors="pt")
    num_queries = model.config.num_queries
    with torch.no_grad():
        for module in model.modules():
            if (
                isinstance(module, torch.nn.Embedding)
                and module.num_embeddings == num_queries
                and module.weight.std() < 0.5
            ):
                module.weight.copy_(50.0 * torch.randn(module.weight.shape, generator=generator))
        projection = model.model.pixel_level_module.decoder.mask_projection
        means = []
        hook = projection.register_forward_hook(
            lambda module, args, output: means.append(output.mean((0, 2, 3)))
        )
        try:
            model(**inputs)
        finally:
            hook.remove()
        projection.bias.sub_(means[0])
        spread = model(**inputs).masks_queries_logits.std((2, 3)).mean()
        embedder = next(
            m for n, m in model.named_modules() if n.endswith(("mask_embedder", "mask_embed"))
        )
        last = [layer for layer in embedder.modules() if isinstance(layer, torch.nn.Linear)][-1]
        last.weight.mul_(3.0 / spread)
        last.bias.mul_(3.0 / spread)


def _label_kwargs(id2label: dict[int, str]) -> dict:
    return {
        "id2label": id2label,
        "label2id": {v: k for k, v in id2label.items()},
        "num_labels": len(id2label),
    }


def _segformer_processor(image_size: int):
    from transformers import SegformerImageProcessorPil

    return SegformerImageProcessorPil(size={"height": image_size, "width": image_size})


def tiny_segformer_config(id2label: dict[int, str], **overrides):
    """The tiny 4-stage SegFormer config (hidden 8/16/24/32, decoder 16) the tests use."""
    from transformers import SegformerConfig

    return SegformerConfig(
        **{
            "num_encoder_blocks": 4,
            "depths": [1, 1, 1, 1],
            "sr_ratios": [8, 4, 2, 1],
            "hidden_sizes": [8, 16, 24, 32],
            "num_attention_heads": [1, 1, 2, 2],
            "decoder_hidden_size": 16,
            **_label_kwargs(id2label),
            **overrides,
        }
    )


def _segformer(id2label, image_size, out):
    from transformers import SegformerForSemanticSegmentation

    config = tiny_segformer_config(id2label)
    return SegformerForSemanticSegmentation(config), _segformer_processor(image_size)


def _upernet(backbone_config, aux_in_channels, id2label, image_size):
    from transformers import UperNetConfig, UperNetForSemanticSegmentation

    config = UperNetConfig(
        backbone_config=backbone_config,
        hidden_size=16,
        auxiliary_channels=8,
        # the auxiliary FCN head reads the third backbone stage
        auxiliary_in_channels=aux_in_channels,
        use_auxiliary_head=True,
        **_label_kwargs(id2label),
    )
    return UperNetForSemanticSegmentation(config), _segformer_processor(image_size)


def _upernet_convnext(id2label, image_size, out):
    from transformers import ConvNextConfig

    backbone = ConvNextConfig(
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1],
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    return _upernet(backbone, 24, id2label, image_size)


def _tiny_swin(image_size: int, embed_dim: int = 8):
    from transformers import SwinConfig

    return SwinConfig(
        image_size=image_size,
        embed_dim=embed_dim,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=2,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )


def _upernet_swin(id2label, image_size, out):
    # embed_dim 4 -> stage widths 4/8/16/32
    return _upernet(_tiny_swin(image_size, embed_dim=4), 16, id2label, image_size)


def _dpt(id2label, image_size, out):
    from transformers import DPTConfig, DPTForSemanticSegmentation, DPTImageProcessorPil

    config = DPTConfig(
        image_size=image_size,
        patch_size=16,
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 8, 16, 16],
        fusion_hidden_size=16,
        is_hybrid=False,
        **_label_kwargs(id2label),
    )
    processor = DPTImageProcessorPil(
        size={"height": image_size, "width": image_size}, keep_aspect_ratio=False
    )
    return DPTForSemanticSegmentation(config), processor


def _beit(id2label, image_size, out):
    from transformers import BeitConfig, BeitForSemanticSegmentation, BeitImageProcessorPil

    config = BeitConfig(
        image_size=image_size,
        patch_size=16,
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        out_indices=[0, 1, 2, 3],
        use_relative_position_bias=True,
        pool_scales=[1, 2],
        auxiliary_channels=8,
        **_label_kwargs(id2label),
    )
    processor = BeitImageProcessorPil(
        size={"height": image_size, "width": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=False,
        do_reduce_labels=True,
    )
    return BeitForSemanticSegmentation(config), processor


def _mobilevit(id2label, image_size, out):
    from transformers import (
        MobileViTConfig,
        MobileViTForSemanticSegmentation,
        MobileViTImageProcessorPil,
    )

    config = MobileViTConfig(
        image_size=image_size,
        hidden_sizes=[16, 16, 16],
        neck_hidden_sizes=[8, 8, 16, 16, 16, 32, 64],
        num_attention_heads=2,
        aspp_out_channels=16,
        **_label_kwargs(id2label),
    )
    processor = MobileViTImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=False,
    )
    return MobileViTForSemanticSegmentation(config), processor


def _mask2former(id2label, image_size, out):
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessorPil,
    )

    config = Mask2FormerConfig(
        backbone_config=_tiny_swin(image_size, embed_dim=8),
        # the pixel decoder's GroupNorm(32, .) needs widths divisible by 32
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=32,
        dim_feedforward=32,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        num_queries=8,
        **_label_kwargs(id2label),
    )
    processor = Mask2FormerImageProcessorPil(
        size={"shortest_edge": image_size, "longest_edge": 2 * image_size},
        size_divisor=32,
        ignore_index=255,
        do_reduce_labels=False,
    )
    return Mask2FormerForUniversalSegmentation(config), processor


def _maskformer(id2label, image_size, out):
    from transformers import (
        DetrConfig,
        MaskFormerConfig,
        MaskFormerForInstanceSegmentation,
        MaskFormerImageProcessorPil,
    )

    decoder = DetrConfig(
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=8,
    )
    config = MaskFormerConfig(
        backbone_config=_tiny_swin(image_size, embed_dim=8),
        decoder_config=decoder,
        fpn_feature_size=32,
        mask_feature_size=32,
        num_queries=8,
        **_label_kwargs(id2label),
    )
    processor = MaskFormerImageProcessorPil(
        size={"shortest_edge": image_size, "longest_edge": 2 * image_size},
        size_divisor=32,
        ignore_index=255,
        do_reduce_labels=False,
    )
    return MaskFormerForInstanceSegmentation(config), processor


ONEFORMER_CLASS_INFO = "class_info.json"
"""OneFormer's image processor reads thing/stuff metadata from this file (its
``class_info_file``); real checkpoints fetch theirs from ``shi-labs/oneformer_demo``."""


def _oneformer(id2label, image_size, out):
    from transformers import (
        CLIPTokenizer,
        OneFormerConfig,
        OneFormerForUniversalSegmentation,
        OneFormerImageProcessorPil,
        OneFormerProcessor,
    )

    class_info = {
        str(i): {"name": name, "isthing": int(name in THING_NAMES)} for i, name in id2label.items()
    }
    (out / ONEFORMER_CLASS_INFO).write_text(json.dumps(class_info))
    # no BPE merges, so a prompt is one token per character: "the task is panoptic" -> 19
    task_seq_len = 24
    config = OneFormerConfig(
        backbone_config=_tiny_swin(image_size, embed_dim=8),
        conv_dim=32,
        mask_dim=32,
        hidden_dim=32,
        encoder_feedforward_dim=32,
        dim_feedforward=32,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        num_queries=8,
        text_encoder_width=32,
        text_encoder_context_length=task_seq_len,
        text_encoder_num_layers=1,
        text_encoder_vocab_size=_VOCAB_SIZE,
        text_encoder_proj_layers=1,
        text_encoder_n_ctx=4,
        task_seq_len=task_seq_len,
        max_seq_len=task_seq_len,
        is_training=False,
        **_label_kwargs(id2label),
    )
    image_processor = OneFormerImageProcessorPil(
        size={"shortest_edge": image_size, "longest_edge": 2 * image_size},
        ignore_index=255,
        do_reduce_labels=False,
        # an absolute repo_path keeps the saved config loadable by transformers alone (the
        # pipeline in parity tests); segdemo's loader points it at the checkpoint folder
        repo_path=str(out),
        class_info_file=ONEFORMER_CLASS_INFO,
        num_text=4,
    )
    tokenizer = CLIPTokenizer(vocab=_clip_vocab(), merges=[])
    processor = OneFormerProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        max_seq_length=task_seq_len,
        task_seq_length=task_seq_len,
    )
    return OneFormerForUniversalSegmentation(config), processor


_VOCAB_SIZE = 2 * 256 + 2


def _clip_vocab() -> dict[str, int]:
    """A minimal byte-level BPE vocabulary without merges: every character is a token."""
    # GPT-2's byte -> printable-unicode table, as CLIP's tokenizer uses
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = iter(range(256, 512))
    byte_chars = [chr(b) if b in printable else chr(next(extra)) for b in range(256)]
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}


_BUILDERS = {
    "segformer": _segformer,
    "upernet-convnext": _upernet_convnext,
    "upernet-swin": _upernet_swin,
    "dpt": _dpt,
    "beit": _beit,
    "mobilevit": _mobilevit,
    "mask2former": _mask2former,
    "maskformer": _maskformer,
    "oneformer": _oneformer,
}
