"""Architecture presets: random-init semantic segmentation models for ``train/run.py --model NAME``.

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

(MobileNetV2/MobileViT + DeepLabV3 were 1.5-3x slower per step on CPU: depthwise and
dilated convolutions; they are not offered.) All presets use the processor of
:func:`make_processor`: resize to ``image_size``, ImageNet mean/std, RGB.
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


def _upernet(backbone: str) -> Callable[[int], Any]:
    def build(num_labels: int) -> Any:
        from transformers import ConvNextConfig, ResNetConfig, UperNetConfig

        stages = ["stage1", "stage2", "stage3", "stage4"]
        if backbone == "resnet-s":
            # ResNet-18 layout at half width: BatchNorm CNNs learn fast from scratch
            backbone_config = ResNetConfig(
                layer_type="basic",
                embedding_size=32,
                hidden_sizes=[32, 64, 128, 256],
                depths=[2, 2, 2, 2],
                out_features=stages,
            )
        else:
            backbone_config = ConvNextConfig(
                hidden_sizes=[40, 80, 160, 320], depths=[2, 2, 6, 2], out_features=stages
            )
        return UperNetConfig(
            num_labels=num_labels,
            backbone_config=backbone_config,
            hidden_size=128,
            use_auxiliary_head=False,
        )

    return build


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


def build_preset(
    name: str, id2label: dict[int, str], image_size: tuple[int, int]
) -> tuple[Any, Any]:
    """A random-init ``(model, processor)`` for preset ``name``.

    Args:
        name: a key of :data:`PRESETS`.
        id2label: class names ``{0: "sky", ...}``; ``num_labels = len(id2label)``.
        image_size: ``(height, width)`` the processor resizes inputs to.

    Returns:
        ``model`` in train mode, its loss ignoring :data:`~segdemo.labels.IGNORE_INDEX`;
        ``processor`` from :func:`make_processor`. Seed torch first for reproducible weights.

    Raises:
        UnknownPresetError: ``name`` is not a preset.
    """
    from transformers import AutoModelForSemanticSegmentation

    if name not in PRESETS:
        raise UnknownPresetError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    config = PRESETS[name].config(len(id2label))
    config.id2label = {int(k): v for k, v in id2label.items()}
    config.label2id = {v: int(k) for k, v in id2label.items()}
    set_ignore_index(config)
    model = AutoModelForSemanticSegmentation.from_config(config)
    model.train()
    return model, make_processor(image_size)


def set_ignore_index(config: Any) -> None:
    """Point the model's own loss at :data:`IGNORE_INDEX`: SegFormer, BEiT, DPT and
    MobileViT read ``semantic_loss_ignore_index``, UperNet ``loss_ignore_index``."""
    config.semantic_loss_ignore_index = IGNORE_INDEX
    if hasattr(config, "loss_ignore_index"):
        config.loss_ignore_index = IGNORE_INDEX
