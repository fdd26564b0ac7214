"""Instance and panoptic segmentation for ``train/run.py``: data, loss, exact PQ / mask AP.

Models are universal (Mask2Former, MaskFormer): each of their queries predicts a class and
a mask, and their own loss (Hungarian matching, class + mask + dice terms) needs per image
the binary masks and class ids of its segments (:mod:`segdemo.universal_transforms`).
Crowd segments are not trained on and are ignored by both metrics; pixels in no segment
(void, padding) belong to no mask.

Evaluation post-processes each val image at its annotation's resolution with the
thresholds given on the command line (``--threshold`` ...), as the app does, and scores it
with :mod:`segdemo.panoptic_quality` (panoptic: PQ, SQ, RQ, panopticapi's rules) or
:mod:`segdemo.mask_ap` (instance: COCO mask AP through pycocotools). Those thresholds and
the thing/stuff split are written into the checkpoint's ``segdemo.json``, so the app
starts from the thresholds the metric was measured at and fuses stuff classes.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch

from segdemo import coco, data, universal_post, universal_transforms
from segdemo.evaluate_universal import score_image, summarize
from segdemo.thresholds import Thresholds
from train import outputs
from train.options import held_out_groups


class UniversalRecipe:
    """What differs for instance/panoptic training: the data, the loss and the metric.

    The data is read and every file checked when the recipe is built, before the model
    exists (:func:`segdemo.coco.validate_universal`).
    """

    def __init__(self, args: argparse.Namespace, *, need_train: bool = True):
        self.args = args
        self.task = args.task
        self.metric = "pq" if self.task == "panoptic" else "ap"
        self.metric_title = outputs.METRIC_TITLES[self.metric]
        self.per_class_chart = f"per_class_{self.metric}.png"
        self.splits = coco.load_universal(
            self.task,
            data_dir=args.data_dir,
            dataset=args.dataset,
            val_fraction=args.val_fraction,
            seed=args.seed,
        )
        groups = held_out_groups(args)
        if groups is not None:
            self.splits = data.hold_out_groups(self.splits, groups, pattern=args.group_pattern)
        coco.validate_universal(
            self.splits, self.task, check=("train", "val") if need_train else ("val",)
        )
        self.id2label = self.splits.id2label
        self.thing_ids = sorted(self.splits.thing_ids)
        self.stuff_ids = sorted(set(self.id2label) - set(self.thing_ids))
        self._image_ids = {name: i for i, name in enumerate(self.splits.val.keys())}
        self.thresholds = Thresholds(
            args.threshold, args.mask_threshold, args.overlap_mask_area_threshold
        )

    # ------------------------------------------------------------------ data
    def train_set(self, processor: Any) -> torch.utils.data.Dataset:
        from segdemo.transforms import Augment

        augment = Augment(
            self.args.crop_size, tuple(self.args.scale_range), jitter=tuple(self.args.jitter)
        )
        return universal_transforms.UniversalTrainDataset(
            self.splits.train, processor, augment, self.task, self.splits.thing_ids
        )

    def val_set(self, processor: Any) -> torch.utils.data.Dataset:
        return universal_transforms.UniversalEvalDataset(self.splits.val, processor, self.task)

    collate_train = staticmethod(universal_transforms.collate_train)
    collate_eval = staticmethod(universal_transforms.collate_eval)

    # ------------------------------------------------------------------ loss
    def prepare_loss(self, device: torch.device) -> None:
        pass  # the model's own loss: nothing to precompute

    def loss(self, model: Any, batch: dict) -> torch.Tensor:
        return model(
            pixel_values=batch["pixel_values"],
            pixel_mask=batch["pixel_mask"],
            mask_labels=batch["mask_labels"],
            class_labels=batch["class_labels"],
        ).loss

    # ------------------------------------------------------------------ evaluation
    @torch.inference_mode()
    def evaluate(self, model: Any, loader: Any, accelerator: Any) -> dict:
        """PQ (panoptic) or mask AP (instance) over ``loader`` on all processes, as a
        JSON-ready report, scored by the code ``python -m segdemo evaluate`` uses
        (:func:`segdemo.evaluate_universal.score_image`). PQ counts are per-image fixed-size
        arrays gathered with ``gather_for_metrics`` (padding duplicates dropped) and summed;
        AP records are gathered as objects and deduplicated by image index."""
        num_classes = len(self.id2label)
        model_type = accelerator.unwrap_model(model).config.model_type
        scores: list = []  # per image: PQ counts (panoptic) or an AP record (instance)
        for batch in loader:
            out = model(pixel_values=batch["pixel_values"])
            sizes = [tuple(t.masks.shape[1:]) for t in batch["targets"]]
            batch_scores = [
                score_image(
                    self.task,
                    target,
                    label_map,
                    [(s["id"], s["label_id"], s["score"]) for s in segments],
                    num_classes,
                    self._image_ids[name],
                )
                for (label_map, segments), target, name in zip(
                    self.predict(model_type, out, sizes),
                    batch["targets"],
                    batch["names"],
                    strict=True,
                )
            ]
            if self.task == "panoptic":
                # one gather per batch: on the last batch accelerate drops the padding
                # duplicates by the batch's real size
                gathered = accelerator.gather_for_metrics(
                    torch.from_numpy(np.stack(batch_scores)).to(accelerator.device)
                )
                scores.append(gathered.sum(0).cpu().numpy())
            else:
                scores += batch_scores
        if self.task == "instance" and accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            scores = gather_object(scores)  # mask_ap drops gather-padding duplicates by key
        return outputs.clean(summarize(self.task, scores, self.id2label, self.thing_ids))

    def predict(
        self, model_type: str, model_outputs: Any, sizes: list[tuple[int, int]]
    ) -> list[tuple[np.ndarray, list[dict]]]:
        """Post-process a batch's outputs at the annotations' sizes ``(H, W)`` with the app's
        code (:func:`segdemo.universal_post.post_process`, the pipeline's results in bounded
        memory). Per image: ``(HxW int32 segment ids 1..n, 0 = none; segment dicts)``."""
        return [
            universal_post.post_process(
                model_outputs,
                model_type,
                self.task,
                target_size=tuple(int(v) for v in size),
                index=index,
                **self.thresholds.as_kwargs(),
                label_ids_to_fuse=set(self.stuff_ids) if self.task == "panoptic" else None,
            )
            for index, size in enumerate(sizes)
        ]

    def per_class(self, report: dict) -> dict[str, float | None]:
        per = report["per_category"]
        return {name: (v.get(self.metric) if isinstance(v, dict) else v) for name, v in per.items()}

    def segdemo_json(self) -> dict:
        """What the app needs to serve the model as it was measured."""
        return {
            "thing_ids": self.thing_ids,
            "thresholds": self.thresholds.as_kwargs(),
        }
