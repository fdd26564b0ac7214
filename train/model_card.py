"""Write the model card (README.md) of a checkpoint produced by train/run.py.

    python train/model_card.py checkpoints/segdemo-camvid --license cc-by-nc-4.0 \\
        --data-note "CamVid (Brostow et al.) ..." --compute-note "1.4 CPU hours ..."

Everything in the card comes from the files train/run.py wrote into the folder:
training_config.json (the arguments, hence the command that reproduces the run),
eval_results.json (val metrics of the exported weights: mIoU, PQ or mask AP by task),
segdemo.json (thresholds the metrics were measured at), the per-class chart and curves.png. Nothing about the model is typed by hand except the data licence and
attribution, which the training data does not carry.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train import outputs  # noqa: E402

# arguments that describe the machine or the bookkeeping, not the recipe
_NOT_RECIPE = {"resume", "no_resume", "eval_only", "push_to_hub", "hub_model_id"}
# arguments a held-out run may differ in from the shipped run of the same recipe
_NOT_SCHEDULE = _NOT_RECIPE | {
    "output_dir", "val_groups", "train_on_val", "export", "eval_every", "save_every",
    "save_total_limit", "log_every", "num_workers", "title", "palette", "save_dtype",
    "channels_last",
}  # fmt: skip


def recipe_differences(
    config: dict, other: dict, defaults: dict, ignore: frozenset[str] = frozenset()
) -> list[str]:
    """The ``--flags`` whose values differ between two runs' training_config.json, ignoring
    data splits, output and bookkeeping (what a held-out run of the same recipe changes)
    and the arguments in ``ignore``."""
    return [
        "--" + key.replace("_", "-")
        for key, default in defaults.items()
        if key not in _NOT_SCHEDULE | ignore and config.get(key, default) != other.get(key, default)
    ]


def output_config(folder: str | Path | None) -> dict | None:
    """The training_config.json of a train/run.py output folder, or ``None`` when
    ``folder`` is not one (a preset name, a hub id, nothing)."""
    path = Path(str(folder)) / "training_config.json"
    return json.loads(path.read_text()) if folder and path.is_file() else None


def training_stages(config: dict) -> list[dict]:
    """The training_config.json of every stage of a run, first stage first: a run whose
    ``--model`` is a train/run.py output folder continued that run's training, which is
    then its stage before (read from that folder now)."""
    stages, seen = [config], set()
    while True:
        start = stages[0].get("model")
        before = output_config(start)
        if before is None or Path(str(start)).resolve() in seen:
            return stages
        seen.add(Path(str(start)).resolve())
        stages.insert(0, before)


def stage_differences(stages: list[dict], others: list[dict], defaults: dict) -> list[str]:
    """:func:`recipe_differences` stage by stage; ``--model`` after the first stage names
    the stage before, which is compared itself. Two ``--init-backbone-from`` folders that
    train/run.py wrote match when their own recipes do (:func:`backbone_differences`)."""
    if len(stages) != len(others):
        return [f"the number of training stages ({len(stages)} vs {len(others)})"]
    differences = []
    for number, (config, other) in enumerate(zip(stages, others, strict=True), 1):
        ignore = {"init_backbone_from"} | ({"model"} if number > 1 else set())
        found = recipe_differences(config, other, defaults, frozenset(ignore))
        found += backbone_differences(config, other, defaults)
        differences += [f"{flag} (stage {number})" for flag in found] if len(stages) > 1 else found
    return differences


def backbone_differences(config: dict, other: dict, defaults: dict) -> list[str]:
    """How two runs' ``--init-backbone-from`` differ: nothing when equal; else, when both
    are train/run.py output folders, how their recipes differ (named ``in
    --init-backbone-from``); else the flag itself."""
    mine, theirs = config.get("init_backbone_from"), other.get("init_backbone_from")
    if mine == theirs:
        return []
    backbones = [output_config(mine), output_config(theirs)]
    if None in backbones:
        return ["--init-backbone-from"]
    found = stage_differences(*(training_stages(b) for b in backbones), defaults)
    return [f"{flag} in --init-backbone-from" for flag in found]


def stage_commands(stages: list[dict], defaults: dict) -> list[str]:
    """The commands that reproduce ``stages`` in order, each stage writing its output where
    the next one starts from (``# stage N`` comments when there are several)."""
    lines = []
    for number, (config, following) in enumerate(zip(stages, [*stages[1:], None], strict=True), 1):
        if following is not None:
            config = {**config, "output_dir": following["model"]}
        if len(stages) > 1:
            lines.append(f"# stage {number}")
        lines.append(reproduce_command(config, defaults))
    return lines


def reproduce_command(config: dict, defaults: dict) -> str:
    """``accelerate launch train/run.py ...`` with every argument that differs from its default."""
    parts = ["accelerate", "launch"]
    if config.get("num_processes", 1) > 1:
        parts += ["--multi_gpu", "--num_processes", str(config["num_processes"])]
    if config.get("mixed_precision", "no") != "no":
        parts += ["--mixed_precision", config["mixed_precision"]]
    parts.append("train/run.py")
    for key, default in defaults.items():
        value = config.get(key, default)
        if key == "id2label" and isinstance(value, dict):
            continue  # training_config.json records the dataset's classes under this name
        if (
            key in _NOT_RECIPE
            or value == default
            or (isinstance(value, list) and tuple(value) == default)
        ):
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag)
        elif isinstance(value, (list, tuple)):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def _fmt(value: float | None) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.4f}"
    )


def model_card(
    folder: Path,
    *,
    license: str,
    data_note: str,
    compute_note: str | None,
    defaults: dict,
    extra_note: str | None = None,
    results_file: Path | None = None,
    heldout: tuple[Path, Path] | None = None,
) -> str:
    """The card's Markdown. ``heldout``: ``(run folder, metrics JSON)`` of the same recipe
    trained with ``--val-groups`` and scored on those groups by ``segdemo evaluate``."""
    config = json.loads((folder / "training_config.json").read_text())
    stages = training_stages(config)
    results = json.loads((folder / "eval_results.json").read_text())
    if results_file is not None:  # a later `segdemo evaluate` of the same weights
        results = {"step": results["step"], **json.loads(results_file.read_text())}
    meta = _segdemo_meta(folder)
    model_config = json.loads((folder / "config.json").read_text())
    title = meta.get("title") or folder.name
    task = config.get("task", "semantic")
    auto = (
        "AutoModelForSemanticSegmentation"
        if task == "semantic"
        else "AutoModelForUniversalSegmentation"
    )
    arch = model_config.get("architectures", ["?"])[0]
    backbone = (model_config.get("backbone_config") or {}).get("model_type")
    lines = [
        "---",
        f"license: {license}",
        "library_name: transformers",
        "pipeline_tag: image-segmentation",
        f"tags: [{task}-segmentation, segdemo]",
        "---",
        "",
        f"# {title}",
        "",
        f"`{arch}`"
        + (f" with a `{backbone}` backbone" if backbone else "")
        + f", {len(config['id2label'])} classes, trained from `{stages[0]['model']}`"
        + (f" in {len(stages)} stages" if len(stages) > 1 else "")
        + " by segdemo's `train/run.py`; this folder is that script's output, "
        + (
            "unedited but for segdemo.json's thresholds, set after training (see below)"
            if results_file is not None
            else "unedited"
        )
        + " (the script also wrote the charts below). Load it with"
        " `segdemo.checkpoint.load_checkpoint` or"
        f" `{auto}.from_pretrained`; the weights are stored in"
        f" {config.get('save_dtype', 'float32')} and load as float32.",
        "",
        "## Data",
        "",
        data_note,
        "",
        f"Train: {config['train_samples']} images; validation: {config['val_samples']} images"
        + (" (carved from train)" if config.get("val_carved_from_train") else "")
        + (", among the training images (--train-on-val)" if config.get("train_on_val") else "")
        + f". Model input: {config['image_size']} (H, W); metrics at the annotations' own resolution.",
        "",
        "## Reproduce",
        "",
        "```bash",
        *stage_commands(stages, defaults),
        "```",
        "",
        f"Processes: {config.get('num_processes')}, torch threads: {config.get('torch_threads')},"
        f" mixed precision: {config.get('mixed_precision')}.",
    ]
    if compute_note:
        lines += ["", compute_note]
    if heldout is not None:
        lines += _heldout_metrics(stages, *heldout, defaults)
    exported = "the last step" if config.get("export") == "last" else "the best val score"
    trained_on_val = (
        "; val images were trained on (--train-on-val): training-set scores, not an estimate"
        " for new images"
        if config.get("train_on_val")
        else ""
    )
    lines += [
        "",
        f"## Validation metrics (exported weights: step {results['step']} of "
        f"{config['total_steps']}, {exported}{trained_on_val})",
        "",
        *_metrics(task, results, meta),
    ]
    if extra_note:
        lines += ["", extra_note]
    lines += ["", "![training curves](curves.png)", ""]
    return "\n".join(lines)


def _heldout_metrics(stages: list[dict], run: Path, metrics: Path, defaults: dict) -> list[str]:
    """The held-out section: the run's commands, what it left out, its metrics. Every
    stage of the held-out run must have held the groups out and match ``stages``' recipe."""
    run_stages = training_stages(json.loads((run / "training_config.json").read_text()))
    run_config = run_stages[-1]
    groups = run_config.get("val_groups")
    if not groups:
        raise SystemExit(f"--heldout {run}: that run held no group out (no --val-groups)")
    saw_groups = [n for n, stage in enumerate(run_stages, 1) if stage.get("val_groups") != groups]
    if saw_groups:
        raise SystemExit(
            f"--heldout {run}: stage {saw_groups[0]} did not hold out {groups}; "
            "every stage must hold the same groups out"
        )
    for stage in run_stages:  # a backbone that trained on the groups would leak them too
        backbone = output_config(stage.get("init_backbone_from"))
        if backbone is not None and any(
            b.get("val_groups") != groups for b in training_stages(backbone)
        ):
            raise SystemExit(
                f"--heldout {run}: its --init-backbone-from {stage['init_backbone_from']} did "
                f"not hold out {groups}; start the held-out run from a backbone that never saw them"
            )
    differences = stage_differences(stages, run_stages, defaults)
    if differences:
        raise SystemExit(
            f"--heldout {run}: not this model's recipe (differs in {', '.join(differences)})"
        )
    results = json.loads(metrics.read_text())
    task = run_config.get("task", "semantic")
    return [
        "",
        f"## Held-out metrics (group {groups}: never trained on)",
        "",
        f"The same recipe trained on the other {run_config['train_samples']} images (everything"
        f" but {groups}) and scored, last step ({run_config['total_steps']}), on the"
        f" {run_config['val_samples']} images of {groups} by `python -m segdemo evaluate` in"
        f" float32. The exported weights also trained on {groups}; these figures estimate what"
        ' to expect on images from a group never trained on (docs/training.md, "Validation'
        ' protocol: held-out groups"). Where the recipe was chosen on this group, they are a'
        " validation score, not a test score.",
        "",
        "```bash",
        *stage_commands(run_stages, defaults),
        "```",
        "",
        # the folder's chart is of its own val split, so none here
        *_metrics(task, results, _segdemo_meta(run), chart=False),
    ]


def _segdemo_meta(folder: Path) -> dict:
    """The folder's segdemo.json (title, palette, thresholds), or ``{}``."""
    path = folder / "segdemo.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _metrics(task: str, results: dict, meta: dict, *, chart: bool = True) -> list[str]:
    """The metric tables of a ``task`` run's results (mIoU, PQ or mask AP); ``meta``: its
    segdemo.json (thresholds); ``chart``: and the folder's per-class chart."""
    if task == "semantic":
        return _semantic_metrics(results, chart=chart)
    return _universal_metrics(task, results, meta, chart=chart)


def _semantic_metrics(results: dict, *, chart: bool = True) -> list[str]:
    """The mIoU tables; ``chart``: and the run's per-class chart (of its own val split)."""
    lines = [
        "| metric | value |",
        "| --- | --- |",
        f"| mean IoU | {_fmt(results['mean_iou'])} |",
        f"| mean accuracy | {_fmt(results['mean_accuracy'])} |",
        f"| overall accuracy | {_fmt(results['overall_accuracy'])} |",
        "",
        "| class | IoU | accuracy |",
        "| --- | --- | --- |",
    ]
    for name, iou in results["per_category_iou"].items():
        lines.append(
            f"| {name} | {_fmt(iou)} | {_fmt(results['per_category_accuracy'].get(name))} |"
        )
    lines += ["", "Metrics have the semantics of 🤗 evaluate's `mean_iou` (segdemo.metrics)."]
    return lines + (["", "![per-class IoU](per_class_iou.png)"] if chart else [])


def _universal_metrics(task: str, results: dict, meta: dict, *, chart: bool = True) -> list[str]:
    """The PQ or mask AP tables at ``meta``'s thresholds; ``chart``: and the per-class chart."""
    thresholds = ", ".join(f"{k} {v}" for k, v in (meta.get("thresholds") or {}).items())
    if task == "panoptic":
        lines = ["| | PQ | SQ | RQ |", "| --- | --- | --- | --- |"]
        for part, suffix in (("all", ""), ("things", "_things"), ("stuff", "_stuff")):
            lines.append(
                f"| {part} | {_fmt(results['pq' + suffix])} | {_fmt(results['sq' + suffix])} |"
                f" {_fmt(results['rq' + suffix])} |"
            )
        lines += [
            "",
            "| class | PQ | SQ | RQ | TP | FP | FN |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, c in results["per_category"].items():
            lines.append(
                f"| {name} | {_fmt(c['pq'])} | {_fmt(c['sq'])} | {_fmt(c['rq'])} |"
                f" {c['tp']:.0f} | {c['fp']:.0f} | {c['fn']:.0f} |"
            )
        note = "PQ with panopticapi's rules (segdemo.panoptic_quality)"
    else:
        lines = ["| metric | value |", "| --- | --- |"]
        for key in ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large"):
            lines.append(f"| {key} | {_fmt(results[key])} |")
        lines += ["", "| class | AP |", "| --- | --- |"]
        lines += [f"| {name} | {_fmt(ap)} |" for name, ap in results["per_category"].items()]
        note = "COCO mask AP through pycocotools (segdemo.mask_ap)"
    metric = "pq" if task == "panoptic" else "ap"
    lines += ["", f"{note}, post-processed at the thresholds the app starts from ({thresholds})."]
    return lines + (["", f"![per-class {metric.upper()}](per_class_{metric}.png)"] if chart else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path, help="a train/run.py output folder")
    parser.add_argument(
        "--license", required=True, help="licence id of the model (follows its data)"
    )
    parser.add_argument(
        "--data-note", required=True, help="data source, licence and attribution (Markdown)"
    )
    parser.add_argument("--compute-note", help="how long it trained, on what (Markdown)")
    parser.add_argument(
        "--extra-note", help="after the metrics, e.g. a baseline comparison (Markdown)"
    )
    parser.add_argument(
        "--results",
        type=Path,
        help="metrics of the exported weights from `python -m segdemo evaluate --out FILE` "
        "instead of eval_results.json (e.g. at thresholds chosen after training)",
    )
    parser.add_argument(
        "--heldout",
        nargs=2,
        type=Path,
        metavar=("RUN", "METRICS"),
        help="a --val-groups run of the same recipe and its `segdemo evaluate --out` JSON on "
        "the held-out groups: the card reports them first",
    )
    args = parser.parse_args(argv)
    from train.options import DEFAULTS

    missing = [
        n
        for n in ("training_config.json", "eval_results.json", "config.json")
        if not (args.folder / n).is_file()
    ]
    if missing:
        print(
            f"error: {args.folder}: not a train/run.py output ({', '.join(missing)} missing)",
            file=sys.stderr,
        )
        return 2
    card = model_card(
        args.folder,
        license=args.license,
        data_note=args.data_note,
        compute_note=args.compute_note,
        defaults=DEFAULTS,
        extra_note=args.extra_note,
        results_file=args.results,
        heldout=tuple(args.heldout) if args.heldout else None,
    )
    outputs.write_bytes(args.folder / "README.md", card.encode())
    print(f"wrote {args.folder / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
