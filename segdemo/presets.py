"""Architecture presets: random-init segmentation models for ``train/run.py --model NAME``.

Used when no pretrained weights can be had (offline, or to train a small model from
scratch). Every preset is a transformers model built from a config, so its checkpoint is
an ordinary HF folder that the app and ``load_checkpoint`` read like any other.

Measured on this project's 2-core CPU (forward + backward + AdamW, batch 4 at 256x320,
11 classes, busy machine so only the ratios matter):

==================  ======  =============  ===================================
preset              params  s/step         notes
==================  ======  =============  ===================================
segformer-b0        3.7 M   5.2            MiT-b0 + all-MLP head (logits 1/4)
segformer-b1        13.7 M  --             MiT-b1; > 10 MB even in fp16
upernet-resnet-s    4.9 M   5.7            ResNet-18 at half width + UperNet
upernet-convnext-n  5.6 M   5.7            ConvNeXt "nano" + UperNet
==================  ======  =============  ===================================

Universal (instance / panoptic) preset, batch 8 at 192x256, same machine:

====================  ======  ======  =============================================
preset                params  s/step  notes
====================  ======  ======  =============================================
mask2former-resnet-s  4.4 M   ~2      Mask2Former on ``upernet-resnet-s``'s ResNet
====================  ======  ======  =============================================

(transformers warns that only Swin backbones are "supported" by Mask2Former; a ResNet
backbone trains and runs, and its stages match ``upernet-resnet-s``'s, so
``--init-backbone-from checkpoints/segdemo-camvid`` can start it warm.)

(MobileNetV2/MobileViT + DeepLabV3 were 1.5-3x slower per step on CPU: depthwise and
dilated convolutions; they are not offered.) Semantic presets use the processor of
:func:`make_processor`, universal ones that of :func:`make_universal_processor`: resize
to ``image_size``, ImageNet mean/std, RGB.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from segdemo.labels import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class UnknownPresetError(ValueError):
    """A preset name that is not in :data:`PRESETS`."""


@dataclass(frozen=True)
class Preset:
    """A named architecture. ``config(num_labels)`` returns the transformers config."""

    name: str
    description: str
    config: Callable[[int], Any]
    universal: bool = (
        False  # Mask2Former-style (instance + panoptic + semantic), else semantic only
    )


def _segformer(
    hidden_sizes: list[int], heads: list[int], depths: list[int]
) -> Callable[[int], Any]:
    def build(num_labels: int) -> Any:
        from transformers import SegformerConfig

        return SegformerConfig(
            num_labels=num_labels,
            hidden_sizes=hidden_sizes,
            num_attention_heads=heads,
            depths=depths,
            decoder_hidden_size=256,
        )

    return build


STAGES = ["stage1", "stage2", "stage3", "stage4"]


def _resnet_s() -> Any:
    """ResNet-18 layout at half width: BatchNorm CNNs learn fast from scratch."""
    from transformers import ResNetConfig

    return ResNetConfig(
        layer_type="basic",
        embedding_size=32,
        hidden_sizes=[32, 64, 128, 256],
        depths=[2, 2, 2, 2],
        out_features=STAGES,
    )


def _upernet(backbone: str) -> Callable[[int], Any]:
    def build(num_labels: int) -> Any:
        from transformers import ConvNextConfig, UperNetConfig

        if backbone == "resnet-s":
            backbone_config = _resnet_s()
        else:
            backbone_config = ConvNextConfig(
                hidden_sizes=[40, 80, 160, 320], depths=[2, 2, 6, 2], out_features=STAGES
            )
        return UperNetConfig(
            num_labels=num_labels,
            backbone_config=backbone_config,
            hidden_size=128,
            use_auxiliary_head=False,
        )

    return build


def _mask2former_resnet_s(num_labels: int) -> Any:
    """Mask2Former at CPU size: 128-d pixel decoder (3 deformable layers) and transformer
    decoder (4 layers, 4 heads), 50 queries, 3136 sampled points per mask in the loss."""
    from transformers import Mask2FormerConfig

    return Mask2FormerConfig(
        backbone_config=_resnet_s(),
        num_labels=num_labels,
        num_queries=50,
        hidden_dim=128,
        mask_feature_size=128,
        feature_size=128,
        encoder_layers=3,
        decoder_layers=4,
        dim_feedforward=512,
        encoder_feedforward_dim=512,
        num_attention_heads=4,
        train_num_points=3136,
    )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "segformer-b0",
            "SegFormer MiT-b0 (hidden 32/64/160/256), 3.7M params",
            _segformer([32, 64, 160, 256], [1, 2, 5, 8], [2, 2, 2, 2]),
        ),
        Preset(
            "segformer-b1",
            "SegFormer MiT-b1 (hidden 64/128/320/512), 13.7M params",
            _segformer([64, 128, 320, 512], [1, 2, 5, 8], [2, 2, 2, 2]),
        ),
        Preset(
            "upernet-resnet-s",
            "UperNet on a half-width ResNet-18 (BatchNorm CNN), 4.9M params",
            _upernet("resnet-s"),
        ),
        Preset(
            "upernet-convnext-n",
            "UperNet on a ConvNeXt-nano-like backbone (40/80/160/320), 5.6M params",
            _upernet("convnext-n"),
        ),
        Preset(
            "mask2former-resnet-s",
            "Mask2Former on upernet-resnet-s's half-width ResNet-18, 50 queries, 4.4M params",
            _mask2former_resnet_s,
            universal=True,
        ),
    )
}


def make_processor(image_size: tuple[int, int]) -> Any:
    """The image processor saved with every preset: resize to ``(height, width)``, scale
    to 0..1, ImageNet mean/std, RGB. Labels are never touched by it (``do_reduce_labels``
    off: :mod:`segdemo.labels` converts annotations)."""
    from transformers.models.segformer.image_processing_pil_segformer import (
        SegformerImageProcessorPil,
    )

    height, width = image_size
    return SegformerImageProcessorPil(
        size={"height": int(height), "width": int(width)},
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        do_reduce_labels=False,
    )


def make_universal_processor(image_size: tuple[int, int], num_labels: int) -> Any:
    """The image processor saved with universal presets (Mask2Former's): resize to
    ``(height, width)``, ImageNet mean/std, RGB, padded to a multiple of 32 (choose sizes
    divisible by 32 so no padding is added: transformers' post-processing resizes the padded
    mask logits, so padding would shift the masks)."""
    from transformers.models.mask2former.image_processing_pil_mask2former import (
        Mask2FormerImageProcessorPil,
    )

    height, width = image_size
    return Mask2FormerImageProcessorPil(
        size={"height": int(height), "width": int(width)},
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        do_reduce_labels=False,
        ignore_index=IGNORE_INDEX,
        num_labels=num_labels,
    )


def build_preset(
    name: str, id2label: dict[int, str], image_size: tuple[int, int]
) -> tuple[Any, Any]:
    """A random-init ``(model, processor)`` for preset ``name``.

    Args:
        name: a key of :data:`PRESETS`.
        id2label: class names ``{0: "sky", ...}``; ``num_labels = len(id2label)``.
        image_size: ``(height, width)`` the processor resizes inputs to.

    Returns:
        ``model`` in train mode, its loss ignoring :data:`~segdemo.labels.IGNORE_INDEX`
        (semantic presets); ``processor`` from :func:`make_processor` (semantic) or
        :func:`make_universal_processor`. Seed torch first for reproducible weights.

    Raises:
        UnknownPresetError: ``name`` is not a preset.
    """
    from transformers import AutoModelForSemanticSegmentation, AutoModelForUniversalSegmentation

    if name not in PRESETS:
        raise UnknownPresetError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    config = preset.config(len(id2label))
    config.id2label = {int(k): v for k, v in id2label.items()}
    config.label2id = {v: int(k) for k, v in id2label.items()}
    if preset.universal:
        model = AutoModelForUniversalSegmentation.from_config(config)
        processor = make_universal_processor(image_size, len(id2label))
    else:
        set_ignore_index(config)
        model = AutoModelForSemanticSegmentation.from_config(config)
        processor = make_processor(image_size)
    model.train()
    return model, processor


def set_ignore_index(config: Any) -> None:
    """Point the model's own loss at :data:`IGNORE_INDEX`: SegFormer, BEiT, DPT and
    MobileViT read ``semantic_loss_ignore_index``, UperNet ``loss_ignore_index``."""
    config.semantic_loss_ignore_index = IGNORE_INDEX
    if hasattr(config, "loss_ignore_index"):
        config.loss_ignore_index = IGNORE_INDEX
