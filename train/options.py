"""``train/run.py``'s command line: one table holds every option's default and its help.

Each row of :data:`OPTIONS` is one flag; ``--help`` prints its help with its default, and
:data:`DEFAULTS` (what the model card compares a run's config with) is derived from the same
rows, so a default is written exactly once.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from segdemo import data, presets
from segdemo.thresholds import DEFAULT_THRESHOLDS

TASKS = ("semantic", "instance", "panoptic")


@dataclass(frozen=True)
class Option:
    """One flag: ``kwargs`` go to ``argparse.add_argument``; ``help`` says why the default."""

    flag: str
    default: Any
    help: str
    kwargs: dict = field(default_factory=dict)

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def _size(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a size in pixels; use a positive integer")
    return value


SIZE = dict(type=_size, nargs="+", metavar="N|H W")

OPTIONS: tuple[Option, ...] = (
    # --- what to train
    Option(
        "--task",
        "semantic",
        "semantic (class per pixel), instance (scored object masks) or panoptic "
        "(stuff + numbered things); instance/panoptic train universal models (Mask2Former)",
        dict(choices=TASKS),
    ),
    Option(
        "--model",
        "segformer-b0",
        "hub id, checkpoint folder, or a random-init preset: " + ", ".join(presets.PRESETS),
    ),
    Option(
        "--init-backbone-from",
        None,
        "copy the backbone weights of this trained checkpoint (folder or hub id) into --model, "
        "e.g. checkpoints/segdemo-camvid's ResNet into mask2former-resnet-s",
    ),
    # --- data
    Option(
        "--data-dir",
        None,
        "semantic: DIR/{train,val}/{images,annotations} + DIR/id2label.json; panoptic: "
        "DIR/{train,val}/{images/,panoptic/,panoptic.json}; instance: DIR/{train,val}/"
        "{images/,instances.json} or the panoptic layout's things (see docs/training.md)",
    ),
    Option(
        "--dataset",
        None,
        "or a 🤗 datasets id / save_to_disk folder (semantic: image + annotation|label columns; "
        "instance: image + annotation with R = class id, G = instance id)",
    ),
    Option("--id2label", None, "class names JSON for --dataset (default: the dataset's own)"),
    Option(
        "--reduce-labels",
        False,
        "semantic: raw 0 = 'other' is ignored and every class v becomes v-1 (ADE20K)",
        dict(action="store_true"),
    ),
    Option(
        "--ignore-index",
        255,
        "semantic: the raw annotation value meaning void (CamVid: 11); 255 is always ignored",
        dict(type=int),
    ),
    Option(
        "--val-groups",
        None,
        "pool train and val, then validate on the images of these groups (comma "
        "list, e.g. 0001TP) and train on the others: a held-out drive, not frames of the "
        "drives trained on (CamVid's val is one of its train drives)",
    ),
    Option(
        "--group-pattern",
        data.GROUP_PATTERN,
        "regex whose first group, matched on a file stem, names the image's group "
        "(default rule: the name up to the first '_', CamVid's drive)",
    ),
    Option(
        "--train-on-val",
        False,
        "train on train + val (a recipe chosen on a held-out group, run on all the "
        "data); val scores are then on training images, so use --export last",
        dict(action="store_true"),
    ),
    Option(
        "--export",
        "best",
        "which weights OUTPUT holds: the best val score so far (selected on val, so val "
        "flatters them) or the last step's (no selection)",
        dict(choices=("best", "last")),
    ),
    Option(
        "--val-fraction",
        0.1,
        "share of train carved out as val when the data has no val split",
        dict(type=float),
    ),
    # --- output
    Option(
        "--output-dir",
        "checkpoints/run",
        "the exported checkpoint (best val weights) plus state/ for resuming",
    ),
    Option(
        "--save-dtype",
        "float32",
        "dtype of the exported weights; float16 halves the file (Spaces want < 10 MB)",
        dict(choices=("float32", "float16", "bfloat16")),
    ),
    Option("--palette", None, "app palette recorded in OUTPUT/segdemo.json (camvid, ade20k, ...)"),
    Option("--title", None, "model name shown in the app (OUTPUT/segdemo.json)"),
    # --- schedule
    Option("--epochs", 10, "passes over the training images", dict(type=int)),
    Option("--max-steps", None, "optimizer steps; overrides --epochs", dict(type=int)),
    Option("--batch-size", 8, "images per step and process", dict(type=int)),
    Option("--eval-batch-size", None, "default: --batch-size", dict(type=int)),
    Option(
        "--lr",
        6e-5,
        "peak learning rate; the transformers guide's fine-tuning value (from scratch: ~1e-3)",
        dict(type=float),
    ),
    Option("--weight-decay", 0.01, "AdamW weight decay", dict(type=float)),
    Option(
        "--scheduler",
        "poly",
        "decay after warm-up: poly (power 1, as the SegFormer paper) or linear",
        dict(choices=("poly", "linear")),
    ),
    Option("--warmup-steps", 0, "linear warm-up from 0 to --lr", dict(type=int)),
    Option("--grad-accum", 1, "batches accumulated per optimizer step", dict(type=int)),
    Option(
        "--ema-decay",
        None,
        "evaluate and export an exponential moving average of the weights with this decay "
        "(e.g. 0.999; warmed up as min(decay, (1+n)/(10+n)) after n steps); default: off",
        dict(type=float),
    ),
    Option(
        "--channels-last",
        False,
        "convolution weights and inputs in channels-last (NHWC) memory order: 1.17x per step "
        "for UperNet-ResNet-S on CPU (bench/bench_channels_last.py); same model and checkpoint",
        dict(action="store_true"),
    ),
    # --- inputs and augmentation
    Option(
        "--image-size",
        None,
        "processor resize, N (square) or H W; default: the checkpoint's, or --crop-size for "
        "presets (universal models: use multiples of 32)",
        SIZE,
    ),
    Option(
        "--crop-size",
        (512, 512),
        "training crop, N (square) or H W; padded with void when the scaled image is smaller",
        SIZE,
    ),
    Option(
        "--scale-range",
        (0.5, 2.0),
        "random rescale of the --image-size input before cropping",
        dict(type=float, nargs=2, metavar=("MIN", "MAX")),
    ),
    Option(
        "--jitter",
        (0.25, 0.25, 0.25, 0.1),
        "colour jitter: brightness, contrast, saturation, hue (0 0 0 0 = off)",
        dict(type=float, nargs=4, metavar=("B", "C", "S", "H")),
    ),
    Option(
        "--class-weights",
        "none",
        "semantic: 'enet' weighs the loss by 1/ln(1.02 + class pixel share) (ENet, Paszke 2016)",
        dict(choices=("none", "enet")),
    ),
    Option(
        "--no-fast-decoder",
        False,
        "SegFormer: train with the stock decode head instead of the exact re-associated one",
        dict(action="store_true"),
    ),
    # --- universal post-processing used by evaluation (and recommended to the app)
    Option(
        "--threshold",
        0.5,
        "instance/panoptic evaluation: minimum class probability of a query; recorded in "
        "OUTPUT/segdemo.json as the model's recommended threshold (a model trained for an "
        "hour on a CPU scores lower than the pipeline's 0.9 assumes)",
        dict(type=float),
    ),
    Option(
        "--mask-threshold",
        DEFAULT_THRESHOLDS.mask_threshold,
        "instance/panoptic evaluation: mask probability at which a pixel is on",
        dict(type=float),
    ),
    Option(
        "--overlap-mask-area-threshold",
        DEFAULT_THRESHOLDS.overlap_mask_area_threshold,
        "instance/panoptic evaluation: drop a segment when less than this share of its mask "
        "survives the overlap resolution (the pipeline's default; at 0.8, detectron2's, the "
        "embedded CamVid model lost most of its cars)",
        dict(type=float),
    ),
    # --- evaluation, checkpoints, logging
    Option(
        "--eval-every",
        None,
        "optimizer steps between evaluations; default: every epoch (and always at the end)",
        dict(type=int),
    ),
    Option(
        "--save-every",
        None,
        "resume-state interval in steps; default: with every evaluation",
        dict(type=int),
    ),
    Option("--save-total-limit", 2, "resume states kept in OUTPUT/state", dict(type=int)),
    Option("--log-every", 10, "steps between train-loss records", dict(type=int)),
    Option("--resume", None, "a state folder to resume from; default: the newest in OUTPUT/state"),
    Option("--no-resume", False, "start over, deleting OUTPUT/state", dict(action="store_true")),
    Option("--seed", 0, "seeds weights, augmentation and the shuffle order", dict(type=int)),
    Option("--num-workers", 2, "DataLoader worker processes per training process", dict(type=int)),
    Option("--push-to-hub", False, "upload OUTPUT when done", dict(action="store_true")),
    Option("--hub-model-id", None, "hub repo for --push-to-hub; default: the output folder's name"),
    Option(
        "--eval-only",
        False,
        "only evaluate --model on the val split and print the metrics",
        dict(action="store_true"),
    ),
)

DEFAULTS: dict[str, Any] = {option.dest: option.default for option in OPTIONS}


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The parser: one ``add_argument`` per :data:`OPTIONS` row, help ending in its default."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sources = parser.add_mutually_exclusive_group()
    for option in OPTIONS:
        where = sources if option.flag in ("--data-dir", "--dataset") else parser
        shown = option.default
        if isinstance(shown, tuple):
            shown = " ".join(str(v) for v in shown)
        note = "" if option.kwargs.get("action") == "store_true" else f" (default: {shown})"
        where.add_argument(option.flag, help=option.help + note, **option.kwargs)
    parser.set_defaults(**DEFAULTS)
    return parser


def held_out_groups(args: argparse.Namespace) -> list[str] | None:
    """The groups ``--val-groups`` holds out (``[]`` with ``--train-on-val``: none, all
    train), or ``None`` when the data's own splits are used."""
    if args.val_groups is None and not args.train_on_val:
        return None
    return data.group_list(args.val_groups)


def parse_args(argv: list[str] | None = None, description: str | None = None) -> argparse.Namespace:
    """Parse and check ``argv``; sizes become ``(height, width)`` tuples."""
    parser = build_parser(description)
    args = parser.parse_args(argv)
    for name in ("image_size", "crop_size"):
        value = getattr(args, name)
        if value is None:
            continue
        if len(value) not in (1, 2):
            parser.error(
                f"--{name.replace('_', '-')} takes N (square) or H W, got {len(value)} numbers"
            )
        setattr(args, name, (value[0], value[0]) if len(value) == 1 else tuple(value))
    if not (args.data_dir or args.dataset):
        parser.error("give the data: --data-dir DIR or --dataset ID_OR_FOLDER")
    if args.val_groups is not None and args.train_on_val:
        parser.error("--val-groups holds a group out and --train-on-val trains on val: pick one")
    for name in ("threshold", "mask_threshold", "overlap_mask_area_threshold"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            parser.error(f"--{name.replace('_', '-')} must be between 0 and 1")
    if args.ema_decay is not None:
        from train.ema import check_decay

        try:
            check_decay(args.ema_decay)
        except ValueError as err:
            parser.error(str(err))
    from segdemo import hub

    if args.push_to_hub and hub.offline():
        parser.error(
            "--push-to-hub needs the network but HF_HUB_OFFLINE is set; unset it or drop --push-to-hub"
        )
    return args
