"""``python -m segdemo evaluate`` on small synthetic folder datasets (offline)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from builders import build_tiny
from PIL import Image

from segdemo.evaluate import EvaluateError, add_evaluate_command, evaluate_folder, saved_predictor
from segdemo.labels import IGNORE_INDEX, to_train_ids
from tests.metric_helpers import mean_iou

ID2LABEL = {0: "sky", 1: "road", 2: "car", 3: "person"}
VOID = 9  # raw "void" value of the synthetic annotations (like CamVid's 11)


def write_dataset(root, split="val", n=3, size=(12, 16), seed=0, id2label=ID2LABEL):
    """Random photos + annotations with void pixels; class 3 never annotated. Returns raw maps by name."""
    rng = np.random.default_rng(seed)
    (root / split / "images").mkdir(parents=True)
    (root / split / "annotations").mkdir(parents=True)
    (root / "id2label.json").write_text(json.dumps({str(k): v for k, v in id2label.items()}))
    raws = {}
    for i in range(n):
        name = f"img{i}"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
            root / split / "images" / f"{name}.jpg"
        )
        raw = rng.integers(0, 3, size).astype(np.uint8)
        raw[rng.random(size) < 0.1] = VOID
        Image.fromarray(raw, mode="L").save(root / split / "annotations" / f"{name}.png")
        raws[name] = raw
    return raws


def write_predictions(folder, raws, seed=1, n_classes=4):
    """NAME_labels.png with ~30% of pixels changed to random classes. Returns them by name."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    preds = {}
    for name, raw in raws.items():
        pred = np.where(
            rng.random(raw.shape) < 0.3, rng.integers(0, n_classes, raw.shape), raw % n_classes
        )
        pred = pred.astype(np.uint8)
        Image.fromarray(pred, mode="L").save(folder / f"{name}_labels.png")
        preds[name] = pred
    return preds


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_evaluate_command(parser.add_subparsers(required=True))
    args = parser.parse_args(["evaluate", *map(str, argv)])
    return args.run(args)


def test_pred_dir_matches_mean_iou_and_writes_named_json(tmp_path, capsys):
    raws = write_dataset(tmp_path / "data")
    preds = write_predictions(tmp_path / "pred", raws)
    out = tmp_path / "out" / "metrics.json"
    code = run_cli(
        "--pred-dir",
        tmp_path / "pred",
        "--data-dir",
        tmp_path / "data",
        "--ignore-index",
        VOID,
        "--out",
        out,
    )
    assert code == 0
    report = json.loads(out.read_text())
    names = sorted(raws)
    refs = [to_train_ids(raws[n], ignore_index=VOID) for n in names]
    want = mean_iou([preds[n] for n in names], refs, len(ID2LABEL), IGNORE_INDEX)
    assert report["mean_iou"] == pytest.approx(want["mean_iou"], rel=1e-12)
    assert report["mean_accuracy"] == pytest.approx(want["mean_accuracy"], rel=1e-12)
    assert report["overall_accuracy"] == pytest.approx(want["overall_accuracy"], rel=1e-12)
    assert list(report["per_category_iou"]) == list(ID2LABEL.values())
    for class_id, name in ID2LABEL.items():
        assert report["per_category_iou"][name] == pytest.approx(
            want["per_category_iou"][class_id], rel=1e-12
        )
    # "person" is predicted but never annotated: IoU 0, accuracy undefined -> null
    assert report["per_category_iou"]["person"] == 0.0
    assert report["per_category_accuracy"]["person"] is None
    assert report["evaluation"]["num_images"] == 3
    printed = capsys.readouterr().out
    assert "person" in printed and "mIoU" in printed


def test_absent_class_is_null_and_excluded_from_mean(tmp_path):
    raws = write_dataset(tmp_path / "data")
    (tmp_path / "pred").mkdir()
    for name, raw in raws.items():  # perfect predictions: class 3 absent from both sides
        Image.fromarray(raw, mode="L").save(tmp_path / "pred" / f"{name}_labels.png")
    out = tmp_path / "m.json"
    assert (
        run_cli(
            "--pred-dir",
            tmp_path / "pred",
            "--data-dir",
            tmp_path / "data",
            "--ignore-index",
            VOID,
            "--out",
            out,
        )
        == 0
    )
    text = out.read_text()
    assert "NaN" not in text
    report = json.loads(text)
    assert report["per_category_iou"]["person"] is None
    assert report["mean_iou"] == 1.0


def test_reduce_labels(tmp_path):
    # ADE-style raw maps: 0 = other (ignored), v = class v - 1
    raws = write_dataset(tmp_path / "data", id2label={0: "a", 1: "b"})
    preds = {}
    (tmp_path / "pred").mkdir()
    for name, raw in raws.items():
        pred = np.clip(raw.astype(np.int64) - 1, 0, 1).astype(np.uint8)
        Image.fromarray(pred, mode="L").save(tmp_path / "pred" / f"{name}_labels.png")
        preds[name] = pred
    matrix, id2label, count = evaluate_folder(
        tmp_path / "data",
        saved_predictor(tmp_path / "pred"),
        reduce_labels=True,
        ignore_index=VOID - 1,
        needs_image=False,
    )
    names = sorted(raws)
    refs = [to_train_ids(raws[n], reduce_labels=True, ignore_index=VOID - 1) for n in names]
    assert count == 3 and id2label == {0: "a", 1: "b"}
    np.testing.assert_array_equal(
        matrix.compute()["per_category_iou"],
        mean_iou([preds[n] for n in names], refs, 2)["per_category_iou"],
    )
    assert matrix.compute()["mean_iou"] == 1.0  # raw 0 pixels were ignored, not scored


def test_model_evaluation_equals_segment_then_mean_iou(tmp_path):
    from segdemo.models import load_model
    from segdemo.segment import segment

    raws = write_dataset(tmp_path / "data", n=2, size=(24, 32))
    model_dir = build_tiny("segformer", tmp_path / "model", id2label=ID2LABEL, image_size=32)
    out = tmp_path / "m.json"
    assert (
        run_cli(
            "--model",
            model_dir,
            "--data-dir",
            tmp_path / "data",
            "--ignore-index",
            VOID,
            "--out",
            out,
        )
        == 0
    )
    report = json.loads(out.read_text())

    loaded = load_model(str(model_dir), allow_any=True)
    names = sorted(raws)
    preds = [
        segment(
            loaded,
            Image.open(tmp_path / "data" / "val" / "images" / f"{n}.jpg").convert("RGB"),
            "semantic",
        ).label_map
        for n in names
    ]
    want = mean_iou(preds, [to_train_ids(raws[n], ignore_index=VOID) for n in names], len(ID2LABEL))
    assert report["mean_iou"] == pytest.approx(want["mean_iou"], rel=1e-12)
    assert report["evaluation"]["model"] == str(model_dir)


def test_model_with_other_classes_is_refused(tmp_path, capsys):
    write_dataset(tmp_path / "data")
    model_dir = build_tiny(
        "segformer", tmp_path / "model", id2label={0: "a", 1: "b"}, image_size=32
    )
    assert (
        run_cli("--model", model_dir, "--data-dir", tmp_path / "data", "--out", tmp_path / "m.json")
        == 2
    )
    err = capsys.readouterr().err
    assert "predicts 2 classes" in err and "Traceback" not in err


def _remove(path):
    path.unlink()


ERROR_CASES = [
    # (breakage(data_dir, pred_dir) -> None or another data dir, fragment of the one-line message)
    pytest.param(lambda d, p: d.parent / "nowhere", "data folder not found", id="missing-data-dir"),
    pytest.param(
        lambda d, p: _remove(d / "id2label.json"), "id2label.json: not found", id="missing-id2label"
    ),
    pytest.param(
        lambda d, p: _remove(p / "img1_labels.png"), "missing prediction", id="missing-prediction"
    ),
    pytest.param(
        lambda d, p: Image.new("L", (5, 5)).save(p / "img0_labels.png"),
        "predict at the annotation's resolution",
        id="wrong-size",
    ),
    pytest.param(
        lambda d, p: _remove(d / "val" / "images" / "img2.jpg"),
        "has no image",
        id="unmatched-annotation",
    ),
    pytest.param(
        lambda d, p: (p / "img0_labels.png").write_bytes(b"not a png"),
        "cannot read",
        id="corrupt-prediction",
    ),
]


@pytest.mark.parametrize(("breakage", "fragment"), ERROR_CASES)
def test_errors_are_one_line_and_nonzero(tmp_path, capsys, breakage, fragment):
    data, pred = tmp_path / "data", tmp_path / "pred"
    write_predictions(pred, write_dataset(data))
    moved = breakage(data, pred)  # a breakage may point --data-dir elsewhere
    data = moved if isinstance(moved, Path) else data
    code = run_cli(
        "--pred-dir", pred, "--data-dir", data, "--ignore-index", VOID, "--out", tmp_path / "m.json"
    )
    err = capsys.readouterr().err
    assert code != 0
    assert fragment in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize(
    ("split", "fragment"),
    [("test", "choose --split from: val"), ("val", "prediction folder not found")],
)
def test_split_and_pred_dir_errors(tmp_path, capsys, split, fragment):
    write_dataset(tmp_path / "data")
    pred = tmp_path / "pred"
    if split == "test":
        pred.mkdir()
    assert (
        run_cli(
            "--pred-dir",
            pred,
            "--data-dir",
            tmp_path / "data",
            "--split",
            split,
            "--out",
            tmp_path / "m.json",
        )
        == 2
    )
    assert fragment in capsys.readouterr().err


def test_evaluate_folder_rejects_predictions_of_wrong_shape(tmp_path):
    write_dataset(tmp_path / "data")
    with pytest.raises(EvaluateError, match="12x16"):
        evaluate_folder(
            tmp_path / "data",
            lambda name, image, size: np.zeros((3, 3), np.int64),
            ignore_index=VOID,
            needs_image=False,
        )


def test_annotation_values_that_are_no_class_are_refused(tmp_path, capsys):
    """Like training's data.validate: void 9 without --ignore-index 9 is a labelling mistake."""
    data, pred = tmp_path / "data", tmp_path / "pred"
    write_predictions(pred, write_dataset(data))
    code = run_cli("--pred-dir", pred, "--data-dir", data, "--out", tmp_path / "m.json")
    err = capsys.readouterr().err
    assert code != 0
    assert "annotations/img0.png: label value 9 is not a class id 0..3" in err
    assert "--ignore-index" in err and err.count("\n") == 1
    assert not (tmp_path / "m.json").exists()


def test_nan_never_written(tmp_path):
    # every pixel void: every metric is undefined -> null, never NaN
    raws = write_dataset(tmp_path / "data", n=1)
    name = next(iter(raws))
    Image.fromarray(np.full((12, 16), VOID, np.uint8), mode="L").save(
        tmp_path / "data" / "val" / "annotations" / f"{name}.png"
    )
    write_predictions(tmp_path / "pred", raws)
    out = tmp_path / "m.json"
    assert (
        run_cli(
            "--pred-dir",
            tmp_path / "pred",
            "--data-dir",
            tmp_path / "data",
            "--ignore-index",
            VOID,
            "--out",
            out,
        )
        == 0
    )
    assert "NaN" not in out.read_text()
    report = json.loads(out.read_text())
    # ignored pixels drop their predictions too: nothing is counted anywhere
    assert report["mean_iou"] is None and report["overall_accuracy"] is None
    assert set(report["per_category_iou"].values()) == {None}


def test_predict_then_pred_dir_equals_model_evaluation(tmp_path, monkeypatch, capsys):
    """`python -m segdemo predict` PNGs scored with --pred-dir give the --model numbers."""
    from segdemo.__main__ import main

    monkeypatch.setenv("SEGDEMO_ALLOW_ANY_MODEL", "1")
    write_dataset(tmp_path / "data", n=2, size=(24, 32))
    model = build_tiny("segformer", tmp_path / "model", id2label=ID2LABEL, image_size=32)
    images = sorted(str(p) for p in (tmp_path / "data" / "val" / "images").iterdir())
    assert (
        main(
            [
                "predict",
                *images,
                "--model",
                str(model),
                "--task",
                "semantic",
                "--out",
                str(tmp_path / "pred"),
            ]
        )
        == 0
    )
    common = ["--data-dir", str(tmp_path / "data"), "--ignore-index", str(VOID)]
    assert (
        main(
            [
                "evaluate",
                "--pred-dir",
                str(tmp_path / "pred"),
                *common,
                "--out",
                str(tmp_path / "a.json"),
            ]
        )
        == 0
    )
    assert (
        main(["evaluate", "--model", str(model), *common, "--out", str(tmp_path / "b.json")]) == 0
    )
    a, b = (json.loads((tmp_path / f"{x}.json").read_text()) for x in "ab")
    for key in (
        "mean_iou",
        "mean_accuracy",
        "overall_accuracy",
        "per_category_iou",
        "per_category_accuracy",
    ):
        assert a[key] == b[key]


def _drives(root: Path) -> dict[str, np.ndarray]:
    """train: drive A frames 0-1 and drive B frame 0; val: drive A frame 2 and drive C
    frame 0 (file names GROUP_FRAME, as CamVid's). Returns raw maps by name."""
    raws = {}
    for split, names, seed in (("train", ("A_0", "A_1", "B_0"), 0), ("val", ("A_2", "C_0"), 1)):
        written = write_dataset(root, split, n=len(names), seed=seed)
        for (old, raw), name in zip(sorted(written.items()), names, strict=True):
            for folder, suffix in (("images", ".jpg"), ("annotations", ".png")):
                (root / split / folder / f"{old}{suffix}").rename(
                    root / split / folder / f"{name}{suffix}"
                )
            raws[name] = raw
    return raws


def test_val_groups_score_one_drive_of_train_and_val_pooled(tmp_path, capsys):
    raws = _drives(tmp_path / "data")
    preds = write_predictions(tmp_path / "pred", raws)
    out = tmp_path / "a.json"
    common = ["--pred-dir", tmp_path / "pred", "--data-dir", tmp_path / "data"]
    assert run_cli(*common, "--ignore-index", VOID, "--val-groups", "A", "--out", out) == 0
    report = json.loads(out.read_text())
    names = ["A_0", "A_1", "A_2"]  # two from train, one from val; B and C left out
    refs = [to_train_ids(raws[n], ignore_index=VOID) for n in names]
    want = mean_iou([preds[n] for n in names], refs, len(ID2LABEL), IGNORE_INDEX)
    assert report["mean_iou"] == pytest.approx(want["mean_iou"], rel=1e-12)
    assert report["overall_accuracy"] == pytest.approx(want["overall_accuracy"], rel=1e-12)
    evaluation = report["evaluation"]
    assert evaluation["num_images"] == 3 and evaluation["val_groups"] == ["A"]
    assert evaluation["split"] == "train+val"
    capsys.readouterr()
    # a group nobody has, or --split beside it: one line, before any scoring
    assert run_cli(*common, "--val-groups", "Z", "--out", tmp_path / "z.json") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--val-groups Z" in err and "A, B, C" in err
    assert run_cli(*common, "--val-groups", "A", "--split", "train", "--out", out) == 2
    assert "drop --split train" in capsys.readouterr().err
