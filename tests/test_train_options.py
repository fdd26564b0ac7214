"""train/run.py's command line: one table of options, sizes as N or H W, help everywhere."""

from __future__ import annotations

import pytest

from train import options


def test_every_option_has_help_with_its_default():
    parser = options.build_parser()
    actions = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert {a.dest for a in actions} == set(options.DEFAULTS)
    for action in actions:
        assert action.help and len(action.help) > 15, action.dest
        if action.nargs != 0:  # flags (store_true) have no default worth printing
            assert "(default: " in action.help, action.dest
    text = parser.format_help()
    assert "--crop-size N|H W" in text and "(default: 512 512)" in text


@pytest.mark.parametrize(
    "given, expected",
    [(["--crop-size", "96"], (96, 96)), (["--crop-size", "96", "128"], (96, 128))],
)
def test_sizes_take_one_number_or_two(given, expected):
    args = options.parse_args(["--data-dir", "d", *given, "--image-size", "64"])
    assert args.crop_size == expected
    assert args.image_size == (64, 64)


@pytest.mark.parametrize(
    "given, message",
    [
        (["--crop-size", "1", "2", "3"], "takes N (square) or H W, got 3 numbers"),
        (["--crop-size", "0"], "is not a size in pixels"),
        (["--threshold", "1.5"], "--threshold must be between 0 and 1"),
        (["--task", "depth"], "invalid choice: 'depth'"),
    ],
)
def test_bad_values_are_one_line_errors(given, message, capsys):
    with pytest.raises(SystemExit):
        options.parse_args(["--data-dir", "d", *given])
    assert message in capsys.readouterr().err


def test_defaults_are_defined_once():
    """The loop, model card and parser read DEFAULTS; the parser's defaults are the table's."""
    args = options.parse_args(["--data-dir", "d"])
    for name, value in options.DEFAULTS.items():
        if name != "data_dir":
            assert getattr(args, name) == value, name


def _splits(train_names, val_names):
    from pathlib import Path

    from segdemo import data

    def source(names):
        return data.FolderSource([data.Pair(n, Path(f"{n}.png"), Path(f"{n}.png")) for n in names])

    return data.Splits(source(train_names), source(val_names), {0: "a"})


def test_val_groups_hold_out_whole_drives():
    from segdemo import data

    splits = _splits(["0001TP_1", "0006R0_1", "0016E5_1", "0016E5_2"], ["0016E5_9"])
    held = data.hold_out_groups(splits, ["0001TP"])
    assert [held.val.name(i) for i in range(len(held.val))] == ["0001TP_1.png"]
    train = sorted(held.train.name(i) for i in range(len(held.train)))
    assert train == ["0006R0_1.png", "0016E5_1.png", "0016E5_2.png", "0016E5_9.png"]
    pooled = data.hold_out_groups(splits, [])  # --train-on-val: everything trains
    assert len(pooled.train) == 5 and len(pooled.val) == 1
    assert data.group_of("x/no-underscore.png") == "no-underscore"


def test_unknown_val_group_names_the_groups_there_are():
    from segdemo import data

    with pytest.raises(data.DatasetError, match=r"--val-groups 0005XX: .*0001TP, 0016E5"):
        data.hold_out_groups(_splits(["0001TP_1"], ["0016E5_1"]), ["0005XX"])


@pytest.mark.parametrize(
    "given, message",
    [
        (["--val-groups", "a", "--train-on-val"], "pick one"),
    ],
)
def test_group_options_conflicts(given, message, capsys):
    with pytest.raises(SystemExit):
        options.parse_args(["--data-dir", "d", *given])
    assert message in capsys.readouterr().err


def test_export_last_follows_the_last_step_and_val_groups_reach_the_run(tmp_path):
    """--export last: OUTPUT holds the last evaluation's weights, whatever scored best;
    --val-groups: the held-out images are the val set (names train_* / val_* -> groups)."""
    import json

    from builders import build_tiny
    from synthetic import write_folder

    from train import run

    data_dir = write_folder(tmp_path / "shapes", n_train=6, n_val=3)
    tiny = build_tiny("segformer", tmp_path / "tiny", id2label={0: "a", 1: "b"}, image_size=64)
    out = tmp_path / "out"
    result = run.main(
        ["--model", str(tiny), "--data-dir", str(data_dir), "--output-dir", str(out)]
        + ["--image-size", "48", "64", "--crop-size", "48", "64", "--num-workers", "0"]
        + ["--max-steps", "3", "--eval-every", "1", "--batch-size", "2", "--export", "last"]
        + ["--val-groups", "val", "--lr", "1e-2"]
    )
    assert json.loads((out / "eval_results.json").read_text())["step"] == 3
    assert result["best"]["step"] == 3
    config = json.loads((out / "training_config.json").read_text())
    assert (config["train_samples"], config["val_samples"]) == (6, 3)


def test_training_and_evaluate_report_duplicate_class_names_alike():
    """One report builder (segdemo.metrics.metrics_report) for train/run.py and evaluate:
    repeated class names are kept apart as "i:name" by both."""
    import numpy as np

    from segdemo.evaluate import build_report
    from segdemo.metrics import ConfusionMatrix
    from train import semantic

    cm = ConfusionMatrix(3, ignore_index=255)
    cm.update(np.array([[0, 1, 2, 2]]), np.array([[0, 1, 1, 2]]))
    metrics = cm.compute()
    id2label = {0: "car", 1: "car", 2: "road"}
    report = build_report(metrics, id2label, {"images": 1})
    assert list(report["per_category_iou"]) == ["0:car", "1:car", "2:road"]
    # pixels (pred, ref): (0,0) (1,1) (2,1) (2,2): IoU 1/1, 1/2, 1/2 (by hand)
    assert list(report["per_category_iou"].values()) == pytest.approx([1.0, 0.5, 0.5])
    assert semantic.metrics_report(metrics, id2label) == {
        k: v for k, v in report.items() if k != "evaluation"
    }
