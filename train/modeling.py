"""The model a training run starts from (or evaluates), for the three tasks.

``--model`` is a preset (random init, :mod:`segdemo.presets`), a checkpoint folder, or a hub
id; folders and hub ids are read through the one load path (:mod:`segdemo.checkpoint`).
A checkpoint of the same label set is loaded strictly; one with other classes keeps
everything but the class-dependent head, which starts random. ``--init-backbone-from``
then copies a trained backbone in (e.g. the embedded semantic model's ResNet into a
Mask2Former), which is how training starts warm when nothing can be downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from segdemo import checkpoint, presets
from segdemo.checkpoint import CheckpointError, check_weights, load_checkpoint, read_config
from segdemo.hub import resolve_model_folder

UNIVERSAL_TASKS = ("instance", "panoptic")
TRAINABLE_UNIVERSAL = ("mask2former", "maskformer")
"""Universal model types whose transformers class computes a loss from ``mask_labels`` and
``class_labels``. OneFormer's also needs text queries built from the annotation; segdemo's
trainer does not build them."""


def load_eval_model(name: str, id2label: dict[int, str]) -> tuple[Any, Any]:
    """``(model, processor)`` of a finished checkpoint, loaded strictly (never a new head).

    Raises:
        CheckpointError: unloadable, or its classes are not the dataset's.
    """
    model, processor = load_checkpoint(resolve_model_folder(name))
    if model.config.num_labels != len(id2label):
        raise CheckpointError(
            f"predicts {model.config.num_labels} classes but the dataset has "
            f"{len(id2label)}; evaluate it on the dataset it was trained for"
        )
    return model, processor


def load_start_model(
    name: str,
    id2label: dict[int, str],
    image_size: tuple[int, int] | None,
    crop: tuple[int, int],
    *,
    task: str = "semantic",
    init_backbone_from: str | None = None,
) -> tuple[Any, Any]:
    """``(model, processor)`` to start training from, in train mode.

    Args:
        name: preset, checkpoint folder or hub id.
        id2label: the dataset's classes ``{0: name, ...}``.
        image_size: ``(height, width)`` the processor resizes to; ``None``: the checkpoint's
            (presets: ``crop``).
        crop: training crop ``(height, width)``.
        task: ``semantic``, ``instance`` or ``panoptic``; the latter two need a universal
            model (Mask2Former, MaskFormer), semantic a semantic one.
        init_backbone_from: a trained checkpoint whose backbone weights are copied in.

    Raises:
        CheckpointError: unloadable checkpoint, a model that cannot train ``task``, or a
            backbone that does not fit.
    """
    check_task(name, task)
    if name in presets.PRESETS:
        model, processor = presets.build_preset(name, id2label, image_size or crop)
    else:
        folder = resolve_model_folder(name)
        kind = checkpoint.model_type(folder)
        same_labels = {
            int(k): v for k, v in (read_config(folder).get("id2label") or {}).items()
        } == id2label
        if same_labels:  # continue training a checkpoint of this dataset: strict load
            model, processor = load_checkpoint(folder)
        else:  # new classes: keep the backbone, replace the mismatched head
            model, processor = _load_with_new_head(folder, kind, id2label, image_size or crop)
        if image_size:
            processor.size = {"height": image_size[0], "width": image_size[1]}
    # labels reach the model already converted by segdemo.labels; a saved processor that
    # reduced labels again would shift every class for whoever uses it with maps
    if hasattr(processor, "do_reduce_labels"):
        processor.do_reduce_labels = False
    if task == "semantic":
        presets.set_ignore_index(model.config)
    if init_backbone_from:
        transfer_backbone(init_backbone_from, model)
    model.train()
    return model, processor


def check_task(name: str, task: str) -> None:
    """Refuse, from the config alone, a ``--model`` that cannot train ``task``.

    Raises:
        CheckpointError: one line naming the model kind and what to use instead.
    """
    if name in presets.PRESETS:
        kind = "mask2former" if presets.PRESETS[name].universal else "semantic"
    else:
        kind = checkpoint.model_type(resolve_model_folder(name))
    universal = checkpoint.is_universal(kind)
    if task == "semantic" and universal:
        # a universal model's semantic output is a by-product of its masks; training it
        # on semantic labels would need per-class masks: use --task panoptic with stuff only
        raise CheckpointError(
            f"{name} is a {kind} model; train it with --task panoptic or instance, or pick a "
            f"semantic model ({', '.join(p for p, v in presets.PRESETS.items() if not v.universal)})"
        )
    if task in UNIVERSAL_TASKS and kind not in TRAINABLE_UNIVERSAL:
        hint = ", ".join(p for p, v in presets.PRESETS.items() if v.universal)
        why = (
            "segdemo cannot train OneFormer (its loss needs text queries per image)"
            if kind == "oneformer"
            else f"--task {task} needs a Mask2Former or MaskFormer model"
        )
        raise CheckpointError(f"{name} is a {kind} model: {why}; use e.g. {hint}")


def _load_with_new_head(
    folder: Path, kind: str, id2label: dict[int, str], image_size: tuple[int, int]
) -> tuple[Any, Any]:
    from transformers import AutoModelForSemanticSegmentation, AutoModelForUniversalSegmentation

    auto = (
        AutoModelForUniversalSegmentation
        if checkpoint.is_universal(kind)
        else AutoModelForSemanticSegmentation
    )
    model = auto.from_pretrained(
        folder,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        ignore_mismatched_sizes=True,
        local_files_only=True,
        trust_remote_code=False,  # unset, transformers offers to run a folder's custom code
        # pickle weights can run code: only with the operator's SEGDEMO_ALLOW_PICKLE=1
        use_safetensors=check_weights(folder, checkpoint.allow_pickle_from_env()),
        dtype=torch.float32,
    )
    if checkpoint.has_processor(folder):
        processor = checkpoint.load_processor(folder, kind)
    else:  # backbone-only repos (e.g. nvidia/mit-b0) have none: the preset's
        processor = (
            presets.make_universal_processor(image_size, len(id2label))
            if checkpoint.is_universal(kind)
            else presets.make_processor(image_size)
        )
    if hasattr(processor, "num_labels"):
        processor.num_labels = len(id2label)
    return model, processor


# --------------------------------------------------------------------------- backbone transfer


def backbone_of(model: torch.nn.Module) -> torch.nn.Module:
    """The backbone module of a segmentation model (the part ``--init-backbone-from`` copies).

    UperNet and other ``AutoBackbone`` users hold it as ``model.backbone``; Mask2Former and
    MaskFormer as ``model.model.pixel_level_module.encoder``; SegFormer as ``model.segformer``.

    Raises:
        CheckpointError: a model with no known backbone attribute.
    """
    for path in ("backbone", "model.pixel_level_module.encoder", "segformer", "beit", "dpt"):
        module: Any = model
        for attr in path.split("."):
            module = getattr(module, attr, None)
            if module is None:
                break
        if isinstance(module, torch.nn.Module):
            return module
    raise CheckpointError(f"{type(model).__name__} has no backbone segdemo knows how to copy")


def transfer_backbone(source: str, model: torch.nn.Module) -> int:
    """Copy the backbone weights of checkpoint ``source`` into ``model``'s backbone.

    Every tensor of the target backbone (parameters and BatchNorm statistics) must exist in
    the source backbone with the same name and shape: a partial copy would silently train
    a half-random backbone.

    Returns:
        The number of tensors copied.

    Raises:
        CheckpointError: ``source`` cannot be loaded, or its backbone does not fit.
    """
    donor, _ = load_checkpoint(resolve_model_folder(source))
    wanted = backbone_of(model).state_dict()
    given = backbone_of(donor).state_dict()
    missing = [k for k in wanted if k not in given]
    mismatched = [k for k in wanted if k in given and given[k].shape != wanted[k].shape]
    if missing or mismatched:
        example = (missing + mismatched)[0]
        raise CheckpointError(
            f"--init-backbone-from {source}: its backbone does not fit the model's "
            f"({len(missing)} tensors missing, {len(mismatched)} of another shape, e.g. "
            f"{example}); use a checkpoint with the same backbone architecture"
        )
    backbone_of(model).load_state_dict({k: given[k].to(wanted[k].dtype) for k in wanted})
    return len(wanted)
