"""Train a semantic, instance or panoptic segmentation model with 🤗 accelerate; the output
folder is a checkpoint the app serves.

Commands (from the repository root; everything distributed goes through ``accelerate``):

    # one process (CPU, or one GPU)
    python train/run.py --model segformer-b0 --data-dir ../shared/datasets/camvid \\
        --ignore-index 11 --output-dir checkpoints/camvid-b0 --max-steps 2000

    # two processes: gloo DDP on CPU here, NCCL on two GPUs; mixed precision from accelerate
    accelerate launch --multi_gpu --num_processes 2 train/run.py ...the same arguments...
    accelerate launch --mixed_precision bf16 train/run.py ...

    # CamVid from scratch (11 classes, raw 11 = void), native 360x480 resolution
    accelerate launch train/run.py --model upernet-resnet-s \\
        --data-dir ../shared/datasets/camvid --ignore-index 11 --palette camvid \\
        --image-size 360 480 --crop-size 360 480 --scale-range 0.5 2.0 \\
        --batch-size 8 --lr 1e-3 --weight-decay 0.01 --scheduler poly --warmup-steps 100 \\
        --epochs 100 --output-dir checkpoints/segdemo-camvid

    # fine-tune a hub model on a 🤗 dataset (ADE-style raw labels: 0 = other)
    python train/run.py --model nvidia/mit-b0 --dataset scene_parse_150 --reduce-labels ...

    # panoptic (stuff + things) from COCO panoptic folders, e.g. CamVid converted by
    # `python -m segdemo convert semantic-to-panoptic`; the backbone starts from our semantic model
    accelerate launch train/run.py --task panoptic --model mask2former-resnet-s \\
        --init-backbone-from checkpoints/segdemo-camvid --data-dir DIR ...

    # instance: COCO instances JSON folders, the panoptic layout's things, or a 🤗 dataset
    accelerate launch train/run.py --task instance --model facebook/mask2former-swin-tiny-coco-instance ...

    # score a checkpoint on the val split (one process), same code as training's evaluation
    python train/run.py --model checkpoints/camvid-b0 --data-dir ... --ignore-index 11 --eval-only

Running the same command again resumes from ``OUTPUT/state/step-N`` (the newest complete
state: model, optimizer, scheduler, RNGs, epoch and batch position); ``--no-resume`` starts
over. ``OUTPUT`` itself is the exported HF checkpoint (config.json + model.safetensors +
preprocessor_config.json): the weights with the best val metric so far (mIoU, PQ or mask
AP; ``--export last``: the last step's), evaluated every ``--eval-every`` steps (default:
every epoch) and at the end. The app lists
``checkpoints/NAME`` by itself. Labels: ``--reduce-labels`` / ``--ignore-index`` describe
the raw annotation values; :mod:`segdemo.labels` converts them once, and the model's own
loss ignores :data:`segdemo.labels.IGNORE_INDEX`. See docs/training.md.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from pathlib import Path

# `python train/run.py` puts train/ on sys.path, not the repository root that holds segdemo/
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from accelerate import Accelerator, DataLoaderConfiguration  # noqa: E402
from accelerate.utils import set_seed  # noqa: E402

from segdemo.checkpoint import CheckpointError  # noqa: E402
from segdemo.data import DatasetError  # noqa: E402
from segdemo.fast_decoder import use_fast_decoder  # noqa: E402
from train import outputs  # noqa: E402
from train.ema import make_ema  # noqa: E402
from train.loop import Trainer  # noqa: E402
from train.memory_format import use_channels_last  # noqa: E402
from train.modeling import check_task, load_eval_model, load_start_model  # noqa: E402
from train.options import parse_args  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    """Run ``train/run.py`` with ``argv``; returns ``{"step", "best", "history"}`` (or, with
    ``--eval-only``, the val report)."""
    args = parse_args(argv, description=__doc__)
    accelerator = make_accelerator(args)
    set_seed(args.seed)

    if not args.eval_only:
        with model_errors(args):
            check_task(args.model, args.task)  # from its config: before reading any data
    recipe = load_data(args)  # every file is read and checked before the model exists
    model, processor = load_model(args, recipe)
    if args.eval_only:
        return evaluate_only(args, accelerator, recipe, model, processor)

    train_loader, val_loader = make_loaders(args, accelerator, recipe, processor)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=args.lr,
        weight_decay=args.weight_decay,
        # one kernel for all parameters instead of ~10 small ops per tensor (Trainer's default too)
        fused=accelerator.device.type in ("cpu", "cuda") or None,
    )
    recipe.prepare_loss(accelerator.device)
    if args.channels_last:
        use_channels_last(model)
    model, optimizer, train_loader, val_loader = accelerator.prepare(
        model, optimizer, train_loader, val_loader
    )
    steps_per_epoch = math.ceil(len(train_loader) / args.grad_accum)
    total_steps = args.max_steps or args.epochs * steps_per_epoch
    scheduler = make_scheduler(args, optimizer, total_steps)
    accelerator.register_for_checkpointing(scheduler)
    ema = None
    if args.ema_decay is not None:  # an average of the prepared (on-device) weights
        ema = make_ema(accelerator.unwrap_model(model), args.ema_decay)
        accelerator.register_for_checkpointing(ema)  # resume states carry the average

    trainer = Trainer(
        args=args,
        accelerator=accelerator,
        recipe=recipe,
        model=model,
        processor=processor,
        optimizer=optimizer,
        scheduler=scheduler,
        ema=ema,
        train_loader=train_loader,
        val_loader=val_loader,
        total_steps=total_steps,
        eval_every=args.eval_every or steps_per_epoch,
        save_every=args.save_every or args.eval_every or steps_per_epoch,
        run_config=run_config(args, accelerator, recipe, processor, steps_per_epoch, total_steps),
        output_dir=Path(args.output_dir),
    )
    trainer.resume()
    if accelerator.is_main_process:
        outputs.write_json(trainer.output_dir / "training_config.json", trainer.run_config)
    trainer.fit()
    if args.push_to_hub and accelerator.is_main_process:
        push(trainer.output_dir, args.hub_model_id or trainer.output_dir.name)
    accelerator.end_training()
    progress = trainer.progress
    return {"step": progress.step, "best": progress.best, "history": progress.history}


# ----------------------------------------------------------------------------- steps of main


def make_accelerator(args) -> Accelerator:
    return Accelerator(
        # `accelerate launch --multi_gpu` on a machine without CUDA would start N independent
        # single-process runs writing one folder; cpu=True makes them one gloo DDP group
        cpu=int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available(),
        gradient_accumulation_steps=args.grad_accum,
        # the shuffle order is a function of (seed, epoch): a resumed run sees the same order
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )


def load_data(args):
    """The task's recipe with its data read and checked (``SystemExit`` naming the file)."""
    try:
        if args.task == "semantic":
            from train.semantic import SemanticRecipe

            return SemanticRecipe(args, need_train=not args.eval_only)
        from train.universal import UniversalRecipe

        return UniversalRecipe(args, need_train=not args.eval_only)
    except DatasetError as err:
        raise SystemExit(f"dataset error: {err}") from None


def load_model(args, recipe):
    """``(model, processor)``: ``--model`` to evaluate, or to start training from."""
    with model_errors(args):
        if args.eval_only:
            return load_eval_model(args.model, recipe.id2label)
        model, processor = load_start_model(
            args.model,
            recipe.id2label,
            args.image_size,
            args.crop_size,
            task=args.task,
            init_backbone_from=args.init_backbone_from,
        )
    if not args.no_fast_decoder:
        use_fast_decoder(model)  # same function and checkpoint, ~2x faster SegFormer steps
    return model, processor


@contextlib.contextmanager
def model_errors(args):
    """A :class:`CheckpointError` ends the run with one line naming ``--model``."""
    try:
        yield
    except CheckpointError as err:
        message = str(err)  # the one resolver's messages start with the name already
        named = message if message.startswith(args.model) else f"{args.model}: {message}"
        raise SystemExit(f"--model {named}") from None


def make_loaders(args, accelerator, recipe, processor):
    """Train and val DataLoaders; batches are built in the worker processes."""
    train_set = recipe.train_set(processor)
    train_loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=args.batch_size,
        shuffle=True,
        # BatchNorm needs > 1 sample per batch
        drop_last=len(train_set) >= args.batch_size * accelerator.num_processes,
        num_workers=args.num_workers,
        persistent_workers=args.num_workers > 0,
        collate_fn=recipe.collate_train,
    )
    return train_loader, make_val_loader(args, recipe, processor)


def make_val_loader(args, recipe, processor):
    # transformers 5's SizeDict iterates as (key, value) pairs: dict() it before asking for keys
    fixed_size = {"height", "width"} <= set(dict(getattr(processor, "size", None) or {}))
    return torch.utils.data.DataLoader(
        recipe.val_set(processor),
        # images of one batch must share a size: processors that keep the aspect get batch 1
        batch_size=(args.eval_batch_size or args.batch_size) if fixed_size else 1,
        num_workers=args.num_workers,
        collate_fn=recipe.collate_eval,
    )


def make_scheduler(args, optimizer, total_steps: int):
    """Warm-up then poly (power 1) or linear decay to 0; stepped by hand once per optimizer
    step (not prepared: accelerate would step it once per process)."""
    from transformers import get_scheduler

    poly = args.scheduler == "poly"
    return get_scheduler(
        "polynomial" if poly else "linear",
        optimizer,
        num_warmup_steps=args.warmup_steps,
        num_training_steps=total_steps,
        scheduler_specific_kwargs={"lr_end": 0.0, "power": 1.0} if poly else None,
    )


def evaluate_only(args, accelerator, recipe, model, processor) -> dict:
    model, val_loader = accelerator.prepare(model, make_val_loader(args, recipe, processor))
    report = recipe.evaluate(model, val_loader, accelerator)
    accelerator.print(json.dumps(outputs.clean(report), indent=2))
    return report


def run_config(args, accelerator, recipe, processor, steps_per_epoch: int, total_steps: int):
    """What ``OUTPUT/training_config.json`` records: the arguments plus what they resolved to."""
    size = dict(getattr(processor, "size", None) or {})
    fixed_size = {"height", "width"} <= set(size)
    return {
        **vars(args),
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "torch_threads": torch.get_num_threads(),
        "train_samples": len(recipe.splits.train),
        "val_samples": len(recipe.splits.val),
        "val_carved_from_train": recipe.splits.val_carved,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "id2label": recipe.id2label,
        "image_size": [size["height"], size["width"]] if fixed_size else size,
    }


def push(output_dir: Path, repo_id: str) -> None:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(
        folder_path=str(output_dir), repo_id=repo_id, ignore_patterns=[f"{outputs.STATE_DIR}/**"]
    )
    print(f"pushed {output_dir} to https://huggingface.co/{repo_id}")


if __name__ == "__main__":
    main()
