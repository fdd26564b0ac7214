"""Train a semantic segmentation model with 🤗 accelerate; the output folder is a checkpoint the app serves.

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

    # score a checkpoint on the val split (one process), same code as training's evaluation
    python train/run.py --model checkpoints/camvid-b0 --data-dir ... --ignore-index 11 --eval-only

Running the same command again resumes from ``OUTPUT/state/step-N`` (the newest complete
state: model, optimizer, scheduler, RNGs, epoch and batch position); ``--no-resume`` starts
over. ``OUTPUT`` itself is the exported HF checkpoint (config.json + model.safetensors +
preprocessor_config.json): the weights with the best val mIoU so far, evaluated every
``--eval-every`` steps (default: every epoch) and at the end. The app lists
``checkpoints/NAME`` by itself. Labels: ``--reduce-labels`` / ``--ignore-index`` describe
the raw annotation values; :mod:`segdemo.labels` converts them once, and the model's own
loss ignores :data:`segdemo.labels.IGNORE_INDEX`. See docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

# `python train/run.py` puts train/ on sys.path, not the repository root that holds segdemo/
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from accelerate import Accelerator, DataLoaderConfiguration  # noqa: E402
from accelerate.utils import set_seed  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from segdemo import data, presets, transforms  # noqa: E402
from segdemo.checkpoint import (  # noqa: E402
    CheckpointError,
    load_checkpoint,
    read_config,
    save_checkpoint,
)
from segdemo.fast_decoder import use_fast_decoder  # noqa: E402
from segdemo.labels import IGNORE_INDEX  # noqa: E402
from segdemo.metrics import ConfusionMatrix  # noqa: E402
from segdemo.segment import upsample_argmax  # noqa: E402
from train import outputs  # noqa: E402

# ----------------------------------------------------------------------------- defaults
DEFAULTS = dict(
    model="segformer-b0",  # hub id, local checkpoint folder, or a preset (random init): see --help
    data_dir=None,  # DIR/{train,val}/{images,annotations} + DIR/id2label.json
    dataset=None,  # or a 🤗 datasets id / save_to_disk folder (image + annotation|label columns)
    id2label=None,  # class names JSON for --dataset (default: its folder's / repo's id2label.json)
    reduce_labels=False,  # raw 0 = "other" -> ignored, v -> v-1 (ADE20K)
    ignore_index=255,  # raw value meaning void (CamVid: 11); 255 is always ignored
    val_fraction=0.1,  # share of train carved out as val when there is no val split
    output_dir="checkpoints/run",  # the exported checkpoint + state/ for resuming
    epochs=10,
    max_steps=None,  # optimizer steps; overrides --epochs
    batch_size=8,  # per process
    eval_batch_size=None,  # default: --batch-size
    lr=6e-5,  # the transformers guide's; from scratch wants ~1e-3
    weight_decay=0.01,
    scheduler="poly",  # poly (power 1, SegFormer paper) or linear, both after warm-up
    warmup_steps=0,
    grad_accum=1,
    image_size=None,  # processor resize (H W); default: the checkpoint's, or --crop-size for presets
    crop_size=(512, 512),  # training crop (H W), padded with IGNORE_INDEX when the image is smaller
    scale_range=(0.5, 2.0),  # random rescale of the --image-size input before cropping
    jitter=(0.25, 0.25, 0.25, 0.1),  # brightness, contrast, saturation, hue (0 0 0 0 = off)
    class_weights="none",  # "enet": loss weight 1/ln(1.02 + class pixel share) (ENet, Paszke 2016)
    save_dtype="float32",  # dtype of the exported weights; float16 halves the file (Spaces: <10 MB)
    eval_every=None,  # optimizer steps; default: once per epoch (and always at the end)
    save_every=None,  # resume-state interval; default: with every evaluation
    save_total_limit=2,  # resume states kept in OUTPUT/state
    log_every=10,  # steps between train-loss records
    resume=None,  # a state folder; default: the newest in OUTPUT/state (see --no-resume)
    no_resume=False,
    seed=0,
    num_workers=2,  # DataLoader workers per process
    no_fast_decoder=False,  # SegFormer: train with the stock decode head (segdemo.fast_decoder)
    palette=None,  # app palette recorded in OUTPUT/segdemo.json (camvid, ade20k, cityscapes, ...)
    title=None,  # model name shown in the app
    push_to_hub=False,
    hub_model_id=None,  # default: the output folder's name
    eval_only=False,  # only evaluate --model on the val split and print the metrics
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model", help=f"hub id, checkpoint folder, or preset: {', '.join(presets.PRESETS)}"
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data-dir")
    source.add_argument("--dataset")
    p.add_argument("--id2label")
    p.add_argument("--reduce-labels", action="store_true")
    p.add_argument("--ignore-index", type=int)
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--output-dir")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--eval-batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--scheduler", choices=("poly", "linear"))
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--crop-size", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--scale-range", type=float, nargs=2, metavar=("MIN", "MAX"))
    p.add_argument("--jitter", type=float, nargs=4, metavar=("B", "C", "S", "H"))
    p.add_argument("--class-weights", choices=("none", "enet"))
    p.add_argument("--save-dtype", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--eval-every", type=int)
    p.add_argument("--save-every", type=int)
    p.add_argument("--save-total-limit", type=int)
    p.add_argument("--log-every", type=int)
    p.add_argument("--resume", help="state folder to resume from (default: newest in OUTPUT/state)")
    p.add_argument("--no-resume", action="store_true", help="start over, deleting OUTPUT/state")
    p.add_argument("--seed", type=int)
    p.add_argument("--num-workers", type=int)
    p.add_argument(
        "--no-fast-decoder",
        action="store_true",
        help="SegFormer: train with the stock decode head instead of the exact re-associated one",
    )
    p.add_argument("--palette")
    p.add_argument("--title")
    p.add_argument("--push-to-hub", action="store_true")
    p.add_argument("--hub-model-id")
    p.add_argument("--eval-only", action="store_true")
    p.set_defaults(**DEFAULTS)
    args = p.parse_args(argv)
    if not (args.data_dir or args.dataset):
        p.error("give the data: --data-dir DIR or --dataset ID_OR_FOLDER")
    if args.push_to_hub and os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0"):
        p.error(
            "--push-to-hub needs the network but HF_HUB_OFFLINE is set; unset it or drop --push-to-hub"
        )
    return args


# ----------------------------------------------------------------------------- model


def resolve_model(name: str) -> Path:
    """A checkpoint folder for ``name``: the folder itself, or a hub id's snapshot in the HF
    cache (downloaded when online; ``HF_HUB_OFFLINE=1`` looks in the cache only)."""
    from segdemo.checkpoint import hub_snapshot

    folder = Path(name)
    if folder.exists():
        return folder
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0")
    try:
        return hub_snapshot(name, local_files_only=offline)
    except Exception as err:  # huggingface_hub raises many types; all mean "not available"
        raise SystemExit(
            f"--model {name}: not a preset, a folder, or a reachable hub model ({type(err).__name__}); "
            f"use a preset ({', '.join(presets.PRESETS)}) or a local checkpoint"
        ) from None


def load_eval_model(name: str, id2label: dict[int, str]):
    """``(model, processor)`` of a finished checkpoint, loaded strictly (never a new head)."""
    model, processor = load_checkpoint(resolve_model(name))
    if model.config.num_labels != len(id2label):
        raise SystemExit(
            f"--model {name} predicts {model.config.num_labels} classes but the dataset has "
            f"{len(id2label)}; evaluate it on the dataset it was trained for"
        )
    return model, processor


def load_start_model(
    name: str, id2label: dict[int, str], image_size: tuple[int, int] | None, crop: tuple[int, int]
):
    """``(model, processor)`` to start from: a preset (random init), or a checkpoint folder or
    hub id (see :func:`resolve_model`). A checkpoint with other classes gets a new, randomly
    initialised head for ``id2label``."""
    if name in presets.PRESETS:
        return presets.build_preset(name, id2label, image_size or crop)
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    from segdemo.checkpoint import allow_pickle_from_env, check_weights

    folder = resolve_model(name)
    same_labels = {
        int(k): v for k, v in (read_config(folder).get("id2label") or {}).items()
    } == id2label
    if same_labels:  # continue training a checkpoint of this dataset: strict load
        model, processor = load_checkpoint(folder)
    else:  # new classes: keep the backbone, replace the mismatched head
        model = AutoModelForSemanticSegmentation.from_pretrained(
            folder,
            id2label=id2label,
            label2id={v: k for k, v in id2label.items()},
            ignore_mismatched_sizes=True,
            local_files_only=True,
            trust_remote_code=False,  # unset, transformers offers to run a folder's custom code
            # pickle weights can run code: only with the operator's SEGDEMO_ALLOW_PICKLE=1
            use_safetensors=check_weights(folder, allow_pickle_from_env()),
        )
        try:
            processor = AutoImageProcessor.from_pretrained(
                folder, local_files_only=True, backend="pil", trust_remote_code=False
            )
        except OSError:  # backbone-only repos (e.g. nvidia/mit-b0) may lack one
            processor = presets.make_processor(image_size or crop)
    if image_size:
        processor.size = {"height": image_size[0], "width": image_size[1]}
    # labels reach the model already converted by segdemo.labels; a saved processor that
    # reduced labels again would shift every class for whoever uses it with maps
    if hasattr(processor, "do_reduce_labels"):
        processor.do_reduce_labels = False
    presets.set_ignore_index(model.config)
    model.train()
    return model, processor


# ----------------------------------------------------------------------------- loss


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


# ----------------------------------------------------------------------------- evaluation


@torch.inference_mode()
def evaluate(model, loader, accelerator: Accelerator, num_labels: int) -> dict:
    """evaluate's ``mean_iou`` over ``loader`` (all processes), at each annotation's resolution.

    Per-sample confusion counts are gathered with ``gather_for_metrics``, which drops the
    duplicates accelerate pads the last batch with, so every sample counts exactly once.
    Logits are upsampled and argmaxed by :func:`segdemo.segment.upsample_argmax`, the app's code.
    """
    was_training = model.training
    model.eval()
    total = torch.zeros(num_labels + 1, num_labels + 1, dtype=torch.int64)
    for batch in loader:
        logits = model(pixel_values=batch["pixel_values"]).logits
        counts = []
        for sample_logits, ref in zip(logits, batch["labels"], strict=True):
            cm = ConfusionMatrix(num_labels, ignore_index=IGNORE_INDEX)
            cm.update(upsample_argmax(sample_logits, tuple(ref.shape)), ref.cpu())
            counts.append(torch.from_numpy(cm.counts))
        total += (
            accelerator.gather_for_metrics(torch.stack(counts).to(accelerator.device)).sum(0).cpu()
        )
    model.train(was_training)
    return ConfusionMatrix.from_counts(total, ignore_index=IGNORE_INDEX).compute()


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        # `accelerate launch --multi_gpu` on a machine without CUDA would start N independent
        # single-process runs writing one folder; cpu=True makes them one gloo DDP group
        cpu=int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available(),
        gradient_accumulation_steps=args.grad_accum,
        # the shuffle order is a function of (seed, epoch): a resumed run sees the same order
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    main_process = accelerator.is_main_process
    set_seed(args.seed)

    # --- data: read and check everything before the first step
    try:
        if args.data_dir:
            splits = data.load_folder(args.data_dir, val_fraction=args.val_fraction, seed=args.seed)
        else:
            splits = data.load_hf(
                args.dataset, id2label=args.id2label, val_fraction=args.val_fraction, seed=args.seed
            )
        num_labels = len(splits.id2label)
        label_args = dict(reduce_labels=args.reduce_labels, ignore_index=args.ignore_index)
        if not args.eval_only:
            train_counts = data.validate(splits.train, num_labels, split="train", **label_args)
        data.validate(splits.val, num_labels, split="val", **label_args)
    except data.DatasetError as err:
        raise SystemExit(f"dataset error: {err}") from None

    try:
        if args.eval_only:
            model, processor = load_eval_model(args.model, splits.id2label)
        else:
            model, processor = load_start_model(
                args.model, splits.id2label, args.image_size, tuple(args.crop_size)
            )
    except CheckpointError as err:
        raise SystemExit(f"--model {args.model}: {err}") from None
    if not (args.eval_only or args.no_fast_decoder):
        use_fast_decoder(model)  # same function and checkpoint, ~2x faster SegFormer steps
    # transformers 5's SizeDict iterates as (key, value) pairs: dict() it before asking for keys
    size = dict(getattr(processor, "size", None) or {})
    fixed_size = {"height", "width"} <= set(size)
    val_set = transforms.SegmentationDataset(splits.val, processor, **label_args)
    val_loader = torch.utils.data.DataLoader(
        val_set,
        # images of one batch must share a size: processors that keep the aspect get batch 1
        batch_size=(args.eval_batch_size or args.batch_size) if fixed_size else 1,
        num_workers=args.num_workers,
        collate_fn=transforms.collate_eval,
    )
    if args.eval_only:
        model, val_loader = accelerator.prepare(model, val_loader)
        metrics = evaluate(model, val_loader, accelerator, num_labels)
        accelerator.print(
            json.dumps(outputs.clean(metrics_report(metrics, splits.id2label)), indent=2)
        )
        return metrics

    augment = transforms.Augment(
        tuple(args.crop_size), tuple(args.scale_range), jitter=tuple(args.jitter)
    )
    train_set = transforms.SegmentationDataset(
        splits.train, processor, augment=augment, **label_args
    )
    train_loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=len(train_set)
        >= args.batch_size * accelerator.num_processes,  # BatchNorm needs > 1 sample
        num_workers=args.num_workers,
        persistent_workers=args.num_workers > 0,
    )
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=args.lr,
        weight_decay=args.weight_decay,
        # one kernel for all parameters instead of ~10 small ops per tensor (Trainer's default too)
        fused=accelerator.device.type in ("cpu", "cuda") or None,
    )
    class_weights = (
        enet_class_weights(train_counts).to(accelerator.device)
        if args.class_weights == "enet"
        else None
    )
    model, optimizer, train_loader, val_loader = accelerator.prepare(
        model, optimizer, train_loader, val_loader
    )

    steps_per_epoch = math.ceil(len(train_loader) / args.grad_accum)
    total_steps = args.max_steps or args.epochs * steps_per_epoch
    eval_every = args.eval_every or steps_per_epoch
    save_every = args.save_every or eval_every
    from transformers import get_scheduler

    # stepped by hand once per optimizer step (not prepared: accelerate would step it once per process)
    scheduler = get_scheduler(
        "polynomial" if args.scheduler == "poly" else "linear",
        optimizer,
        num_warmup_steps=args.warmup_steps,
        num_training_steps=total_steps,
        scheduler_specific_kwargs={"lr_end": 0.0, "power": 1.0}
        if args.scheduler == "poly"
        else None,
    )
    accelerator.register_for_checkpointing(scheduler)

    # --- resume
    if args.no_resume and main_process and (output_dir / outputs.STATE_DIR).exists():
        import shutil

        shutil.rmtree(output_dir / outputs.STATE_DIR)
    accelerator.wait_for_everyone()
    resume_from = (
        Path(args.resume)
        if args.resume
        else (None if args.no_resume else outputs.latest_state(output_dir))
    )
    progress = {
        "step": 0,
        "epoch": 0,
        "batches_done": 0,
        "best": None,
        "history": {"train": [], "eval": []},
    }
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        progress = outputs.read_trainer_state(resume_from)
        accelerator.print(
            f"resumed from {resume_from} at step {progress['step']} (epoch {progress['epoch']})"
        )
    history = progress["history"]

    run_config = {
        **vars(args),
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "torch_threads": torch.get_num_threads(),
        "train_samples": len(splits.train),
        "val_samples": len(splits.val),
        "val_carved_from_train": splits.val_carved,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "id2label": splits.id2label,
        "image_size": [size["height"], size["width"]] if fixed_size else size,
    }
    if main_process:
        outputs.write_json(output_dir / "training_config.json", run_config)

    def export(metrics: dict, step: int) -> None:
        """Main process: OUTPUT becomes a checkpoint of the current weights (atomic swap)."""
        per_class = outputs.by_name(metrics["per_category_iou"], splits.id2label)
        report = {"step": step, **metrics_report(metrics, splits.id2label)}
        save_checkpoint(
            output_dir,
            accelerator.unwrap_model(model),
            processor,
            extra_files={
                "training_config.json": json.dumps(outputs.clean(run_config), indent=2),
                "eval_results.json": json.dumps(outputs.clean(report), indent=2),
                "per_class_iou.png": outputs.per_class_png(
                    per_class, f"val IoU per class, step {step}"
                ),
                "segdemo.json": json.dumps(
                    {k: v for k, v in {"palette": args.palette, "title": args.title}.items() if v}
                ),
            },
            keep=outputs.KEEP,
            weights_dtype=getattr(torch, args.save_dtype),
        )

    # --- train
    step, epoch, skip = progress["step"], progress["epoch"], progress["batches_done"]
    bar = tqdm(
        total=total_steps, initial=step, disable=not accelerator.is_local_main_process, desc="train"
    )
    loss_sum, loss_count, started = (
        torch.zeros((), device=accelerator.device),
        0,
        time.perf_counter(),
    )
    model.train()
    while step < total_steps:
        train_loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
        for batch_index, batch in enumerate(batches, start=skip):
            with accelerator.accumulate(model):
                outputs_ = model(**batch)
                loss = (
                    outputs_.loss
                    if class_weights is None
                    else weighted_loss(outputs_.logits, batch["labels"], class_weights)
                )
                if not torch.isfinite(loss):
                    # a crop with only ignored pixels gives NaN; a zero loss keeps DDP's
                    # gradient all-reduce in step on every process
                    loss = outputs_.logits.sum() * 0.0
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            loss_sum += loss.detach()
            loss_count += 1
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            bar.update()
            epoch_done = batch_index + 1 == len(train_loader)
            last = step >= total_steps
            if step % args.log_every == 0 or last:
                mean_loss = accelerator.gather(loss_sum / max(loss_count, 1)).mean().item()
                history["train"].append(
                    {
                        "step": step,
                        "epoch": epoch,
                        "loss": mean_loss,
                        "lr": scheduler.get_last_lr()[0],
                        # wall seconds since this process started training (bench/bench_train.py)
                        "elapsed": time.perf_counter() - started,
                        "cpu": time.process_time(),  # this process's CPU seconds (all threads)
                    }
                )
                bar.set_postfix(loss=f"{mean_loss:.3f}")
                loss_sum.zero_()
                loss_count = 0
            if step % eval_every == 0 or (args.eval_every is None and epoch_done) or last:
                metrics = evaluate(model, val_loader, accelerator, num_labels)
                record = {
                    "step": step,
                    "epoch": epoch + int(epoch_done),
                    **metrics_report(metrics, splits.id2label),
                }
                history["eval"].append(record)
                improved = (
                    progress["best"] is None or metrics["mean_iou"] > progress["best"]["mean_iou"]
                )
                accelerator.print(
                    f"step {step}: val mIoU {metrics['mean_iou']:.4f}"
                    + (" (best, exported)" if improved else "")
                )
                if improved:
                    progress["best"] = {"step": step, "mean_iou": float(metrics["mean_iou"])}
                    if main_process:
                        export(metrics, step)
                if main_process:
                    history["best"] = progress["best"]
                    outputs.write_json(output_dir / "history.json", history)
                    outputs.write_bytes(output_dir / "curves.png", outputs.curves_png(history))
                accelerator.wait_for_everyone()
            if (
                step % save_every == 0
                or (args.save_every is None and args.eval_every is None and epoch_done)
                or last
            ):
                position = (epoch + 1, 0) if epoch_done else (epoch, batch_index + 1)
                save_state(
                    accelerator,
                    output_dir,
                    step,
                    position,
                    progress,
                    history,
                    args.save_total_limit,
                )
            if last:
                break
        else:
            epoch, skip = epoch + 1, 0
            continue
        break
    bar.close()
    accelerator.wait_for_everyone()
    accelerator.print(
        f"done: {step} steps in {time.perf_counter() - started:.0f}s; best {progress['best']}; model in {output_dir}"
    )
    if args.push_to_hub and main_process:
        push(output_dir, args.hub_model_id or output_dir.name)
    accelerator.end_training()
    return {"step": step, "best": progress["best"], "history": history}


def metrics_report(metrics: dict, id2label: dict[int, str]) -> dict:
    """Metrics with per-class arrays keyed by class name (NaN -> None), JSON-ready."""
    report = {k: float(v) for k, v in metrics.items() if not k.startswith("per_category")}
    report["per_category_iou"] = outputs.by_name(metrics["per_category_iou"], id2label)
    report["per_category_accuracy"] = outputs.by_name(metrics["per_category_accuracy"], id2label)
    return outputs.clean(report)


def save_state(
    accelerator,
    output_dir: Path,
    step: int,
    position,
    progress: dict,
    history: dict,
    keep_last: int,
) -> None:
    """All processes write ``state/step-N.tmp``; the main process publishes it as ``step-N``."""
    tmp = outputs.temp_state_path(output_dir, step)
    if accelerator.is_main_process and tmp.exists():
        import shutil

        shutil.rmtree(tmp)  # left by a killed run
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    progress.update(step=step, epoch=position[0], batches_done=position[1], history=history)
    if accelerator.is_main_process:
        outputs.publish_state(output_dir, step, progress, keep_last)
    accelerator.wait_for_everyone()


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
