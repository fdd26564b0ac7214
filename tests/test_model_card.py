"""train/model_card.py: a model trained on train+val reports the held-out run of its recipe
first, and refuses a held-out run of another recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from train import model_card
from train.options import DEFAULTS

ID2LABEL = {"0": "sky", "1": "road"}


def _metrics(miou: float) -> dict:
    return {
        "mean_iou": miou,
        "mean_accuracy": 0.8,
        "overall_accuracy": 0.9,
        "per_category_iou": {"sky": miou + 0.1, "road": miou - 0.1},
        "per_category_accuracy": {"sky": 0.8, "road": 0.8},
    }


def _run(folder: Path, **arguments) -> Path:
    """A train/run.py output folder as the card reads it (files only, no weights)."""
    folder.mkdir(parents=True)
    config = {
        **DEFAULTS,
        "model": "upernet-resnet-s",
        "data_dir": "camvid",
        "lr": 2e-3,
        "max_steps": 4000,
        "export": "last",
        **arguments,
        "id2label": ID2LABEL,
        "train_samples": 468,
        "val_samples": 101,
        "total_steps": 4000,
        "image_size": [240, 320],
    }
    (folder / "training_config.json").write_text(json.dumps(config))
    (folder / "eval_results.json").write_text(json.dumps({"step": 4000, **_metrics(0.6)}))
    (folder / "config.json").write_text(json.dumps({"architectures": ["UperNetX"]}))
    return folder


def _card_with_heldout(
    tmp_path: Path, shipped: Path, held: Path, held_metrics: dict | None = None
) -> str:
    """The card of ``shipped`` with ``held`` as its held-out run, which scored
    ``held_metrics`` (default: mIoU 0.4321)."""
    metrics = tmp_path / "heldout.json"
    metrics.write_text(json.dumps(held_metrics or _metrics(0.4321)))
    return model_card.model_card(
        shipped,
        license="cc-by-nc-4.0",
        data_note="data",
        compute_note=None,
        defaults=DEFAULTS,
        heldout=(held, metrics),
    )


def _card(tmp_path: Path, heldout_arguments: dict) -> str:
    shipped = _run(tmp_path / "shipped", train_on_val=True, output_dir="checkpoints/x")
    heldout = _run(tmp_path / "heldout", **heldout_arguments)
    return _card_with_heldout(tmp_path, shipped, heldout)


def test_the_held_out_run_comes_first_with_its_command(tmp_path):
    card = _card(tmp_path, {"val_groups": "0001TP", "output_dir": "/tmp/held"})
    held = card.index("## Held-out metrics (group 0001TP: never trained on)")
    val = card.index("## Validation metrics")
    assert held < val
    section = card[held:val]
    assert "| mean IoU | 0.4321 |" in section
    assert "--val-groups 0001TP" in section and "--lr 0.002" in section
    assert "| mean IoU | 0.6000 |" in card[val:]
    assert "per_class_iou.png" not in section  # the folder's chart is of the val split
    assert "training-set scores" in card[val:].splitlines()[0]
    assert "images, among the training images (--train-on-val)." in card[:held]


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"val_groups": "0001TP", "lr": 1e-3}, "differs in --lr"),
        ({"val_groups": "0001TP", "max_steps": 800, "ema_decay": 0.999}, "--max-steps, --ema"),
        ({}, "held no group out"),
    ],
)
def test_a_held_out_run_of_another_recipe_is_refused(tmp_path, arguments, message):
    with pytest.raises(SystemExit, match=message):
        _card(tmp_path, arguments)


def _two_stage_card(tmp_path: Path, first_heldout: dict) -> tuple[str, Path, Path]:
    """A shipped model fine-tuned (stage 2) from a train/run.py output folder (stage 1), and
    its held-out twin: both stages again with --val-groups."""
    first = _run(tmp_path / "first", train_on_val=True, output_dir="checkpoints/x")
    shipped = _run(
        tmp_path / "shipped",
        train_on_val=True,
        model=str(first),
        lr=5e-4,
        output_dir="checkpoints/x",
    )
    first_held = _run(tmp_path / "first_held", **first_heldout)
    held = _run(tmp_path / "held", val_groups="0001TP", model=str(first_held), lr=5e-4)
    return _card_with_heldout(tmp_path, shipped, held), first, first_held


def test_a_fine_tuned_model_shows_every_stage_and_its_held_out_twins(tmp_path):
    card, first, first_held = _two_stage_card(tmp_path, {"val_groups": "0001TP"})
    assert "trained from `upernet-resnet-s` in 2 stages" in card
    held = card.index("## Held-out metrics")
    shipped_commands = card[card.index("## Reproduce") : held]
    stage1, stage2 = shipped_commands.split("# stage 2")
    assert "# stage 1" in stage1 and f"--output-dir {first}" in stage1
    assert "--lr 0.002" in stage1 and "--lr 0.0005" in stage2
    # stage 1 trained in checkpoints/x too, but is shown writing where stage 2 starts from
    assert f"--model {first}" in stage2 and "--output-dir checkpoints/x" in stage2
    section = card[held : card.index("## Validation metrics")]
    assert f"--output-dir {first_held}" in section and f"--model {first_held}" in section


@pytest.mark.parametrize(
    "first_heldout, message",
    [
        ({"val_groups": "0001TP", "lr": 1e-3}, r"differs in --lr \(stage 1\)"),
        ({}, "stage 1 did not hold out 0001TP"),
    ],
)
def test_a_held_out_twin_with_another_first_stage_is_refused(tmp_path, first_heldout, message):
    with pytest.raises(SystemExit, match=message):
        _two_stage_card(tmp_path, first_heldout)


def test_a_one_stage_held_out_run_is_not_the_twin_of_a_two_stage_model(tmp_path):
    first = _run(tmp_path / "first", train_on_val=True)
    shipped = _run(tmp_path / "shipped", train_on_val=True, model=str(first))
    held = _run(tmp_path / "held", val_groups="0001TP")
    with pytest.raises(SystemExit, match="number of training stages"):
        _card_with_heldout(tmp_path, shipped, held)


@pytest.mark.parametrize(
    "heldout_backbone, message",
    [
        ({"val_groups": "0001TP"}, None),  # the same backbone recipe, its held-out twin
        ({"val_groups": "0001TP", "max_steps": 800}, "--max-steps in --init-backbone-from"),
        ({}, "did not hold out 0001TP"),  # the held-out run's backbone trained on the drive
    ],
)
def test_backbones_are_compared_by_their_recipes(tmp_path, heldout_backbone, message):
    """A panoptic model started from one semantic run's backbone, and its held-out twin
    started from that run's held-out twin: the backbone folders differ, their recipes not."""
    backbone = _run(tmp_path / "backbone", train_on_val=True)
    held_backbone = _run(tmp_path / "held_backbone", **heldout_backbone)
    shipped = _run(tmp_path / "shipped", train_on_val=True, init_backbone_from=str(backbone))
    held = _run(tmp_path / "held", val_groups="0001TP", init_backbone_from=str(held_backbone))
    if message is None:
        assert "## Held-out metrics" in _card_with_heldout(tmp_path, shipped, held)
    else:
        with pytest.raises(SystemExit, match=message):
            _card_with_heldout(tmp_path, shipped, held)
    other = _run(tmp_path / "other", val_groups="0001TP", init_backbone_from="not/a/run")
    with pytest.raises(SystemExit, match="differs in --init-backbone-from"):
        _card_with_heldout(tmp_path, shipped, other)


def _panoptic_metrics(pq: float) -> dict:
    per_class = {"pq": pq, "sq": 0.7, "rq": pq / 0.7, "tp": 3, "fp": 1, "fn": 2}
    return {
        **{f"{m}{part}": pq for m in ("pq", "sq", "rq") for part in ("", "_things", "_stuff")},
        "per_category": {"sky": per_class, "road": per_class},
    }


def test_a_panoptic_held_out_run_reports_pq(tmp_path):
    shipped = _run(tmp_path / "shipped", task="panoptic", train_on_val=True)
    (shipped / "eval_results.json").write_text(json.dumps({"step": 4000, **_panoptic_metrics(0.5)}))
    held = _run(tmp_path / "held", task="panoptic", val_groups="0001TP")
    (held / "segdemo.json").write_text(json.dumps({"thresholds": {"threshold": 0.5}}))
    card = _card_with_heldout(tmp_path, shipped, held, _panoptic_metrics(0.3441))
    section = card[card.index("## Held-out metrics") : card.index("## Validation metrics")]
    assert "| all | 0.3441 |" in section and "| sky | 0.3441 |" in section
    assert "(threshold 0.5)" in section and "per_class_pq.png" not in section
    assert "| all | 0.5000 |" in card[card.index("## Validation metrics") :]
