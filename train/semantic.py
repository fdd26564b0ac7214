"""Semantic segmentation for ``train/run.py``: data, loss and exact mIoU evaluation.

Labels: annotations hold raw values; ``--reduce-labels`` / ``--ignore-index`` describe them
and :func:`segdemo.labels.to_train_ids` turns them into class ids ``0..C-1`` plus
:data:`~segdemo.labels.IGNORE_INDEX` (255), which the model's loss and the metric skip.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from segdemo import data, transforms
from segdemo.labels import IGNORE_INDEX
from segdemo.metrics import ConfusionMatrix, metrics_report
from segdemo.upsample import upsample_argmax
from train.options import held_out_groups

METRIC = "mean_iou"


class SemanticRecipe:
    """What differs for semantic training: the data, the loss and the metric.

    The data is read and every annotation checked when the recipe is built, before the
    model exists (a bad file stops the run in seconds, not an hour in).
    """

    task = "semantic"
    metric = METRIC
    metric_title = "mIoU"
    per_class_chart = "per_class_iou.png"

    def __init__(self, args: argparse.Namespace, *, need_train: bool = True):
        self.args = args
        if args.data_dir:
            self.splits = data.load_folder(
                args.data_dir, val_fraction=args.val_fraction, seed=args.seed
            )
        else:
            self.splits = data.load_hf(
                args.dataset, id2label=args.id2label, val_fraction=args.val_fraction, seed=args.seed
            )
        groups = held_out_groups(args)
        if groups is not None:
            self.splits = data.hold_out_groups(self.splits, groups, pattern=args.group_pattern)
        self.id2label = self.splits.id2label
        self.label_args = dict(reduce_labels=args.reduce_labels, ignore_index=args.ignore_index)
        num_labels = len(self.id2label)
        self.train_counts = (
            data.validate(self.splits.train, num_labels, split="train", **self.label_args)
            if need_train
            else None
        )
        data.validate(self.splits.val, num_labels, split="val", **self.label_args)
        self.class_weights: torch.Tensor | None = None

    # ------------------------------------------------------------------ data
    def train_set(self, processor: Any) -> torch.utils.data.Dataset:
        augment = transforms.Augment(
            self.args.crop_size, tuple(self.args.scale_range), jitter=tuple(self.args.jitter)
        )
        return transforms.SegmentationDataset(
            self.splits.train, processor, augment=augment, **self.label_args
        )

    def val_set(self, processor: Any) -> torch.utils.data.Dataset:
        return transforms.SegmentationDataset(self.splits.val, processor, **self.label_args)

    collate_train = None  # torch's default: every crop has the same size
    collate_eval = staticmethod(transforms.collate_eval)

    # ------------------------------------------------------------------ loss
    def prepare_loss(self, device: torch.device) -> None:
        if self.args.class_weights == "enet":
            self.class_weights = enet_class_weights(self.train_counts).to(device)

    def loss(self, model: Any, batch: dict) -> torch.Tensor:
        out = model(**batch)
        if self.class_weights is None:
            loss = out.loss
        else:
            loss = weighted_loss(out.logits, batch["labels"], self.class_weights)
        if not torch.isfinite(loss):
            # a crop with only ignored pixels gives NaN; a zero loss keeps DDP's gradient
            # all-reduce in step on every process
            loss = out.logits.sum() * 0.0
        return loss

    # ------------------------------------------------------------------ evaluation
    @torch.inference_mode()
    def evaluate(self, model: Any, loader: Any, accelerator: Any) -> dict:
        """evaluate's ``mean_iou`` over ``loader`` (all processes), at each annotation's
        resolution, as a JSON-ready report (``mean_iou`` ... and per-class dicts).

        Per-sample confusion counts are gathered with ``gather_for_metrics``, which drops the
        duplicates accelerate pads the last batch with, so every sample counts exactly once.
        Logits are upsampled and argmaxed by :func:`segdemo.upsample.upsample_argmax`, the
        app's code.
        """
        num_labels = len(self.id2label)
        total = torch.zeros(num_labels + 1, num_labels + 1, dtype=torch.int64)
        for batch in loader:
            logits = model(pixel_values=batch["pixel_values"]).logits
            counts = []
            for sample_logits, ref in zip(logits, batch["labels"], strict=True):
                cm = ConfusionMatrix(num_labels, ignore_index=IGNORE_INDEX)
                cm.update(upsample_argmax(sample_logits, tuple(ref.shape)), ref.cpu())
                counts.append(torch.from_numpy(cm.counts))
            gathered = accelerator.gather_for_metrics(torch.stack(counts).to(accelerator.device))
            total += gathered.sum(0).cpu()
        metrics = ConfusionMatrix.from_counts(total, ignore_index=IGNORE_INDEX).compute()
        return metrics_report(metrics, self.id2label)

    def per_class(self, report: dict) -> dict[str, float | None]:
        return report["per_category_iou"]

    def segdemo_json(self) -> dict:
        return {}


def enet_class_weights(pixel_counts) -> torch.Tensor:
    """ENet's class weighting ``1 / ln(1.02 + p_c)``, ``p_c`` = class share of train pixels.

    Rare classes (poles, signs, pedestrians) get up to ~50x the weight of a class that
    covers everything, bounded unlike inverse frequency, so mIoU (a mean over classes)
    is not dominated by road and sky. ``(num_labels,)`` float32.
    """
    counts = torch.as_tensor(pixel_counts, dtype=torch.float64)
    share = counts / counts.sum().clamp(min=1)
    return (1.0 / torch.log(1.02 + share)).float()


def weighted_loss(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Class-weighted cross-entropy, computed as the models compute theirs: logits
    (``N x C x h x w``) upsampled bilinearly to the labels' ``H x W``; IGNORE_INDEX skipped."""
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = torch.nn.functional.interpolate(
            logits, size=labels.shape[-2:], mode="bilinear", align_corners=False
        )
    return torch.nn.functional.cross_entropy(
        logits.float(), labels, weight=weight, ignore_index=IGNORE_INDEX
    )
