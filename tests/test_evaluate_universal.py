"""``python -m segdemo evaluate --task instance|panoptic`` on a tiny synthetic COCO panoptic folder.

The folder is written here: sky and road (stuff) with car and person boxes (things),
void rings around the boxes, one crowd region, COCO category ids that are not
contiguous (1, 2, 5, 9 -> model classes 0..3 = builders.DEFAULT_ID2LABEL's names).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from builders import DEFAULT_ID2LABEL, build_tiny
from PIL import Image

from segdemo.__main__ import main
from segdemo.coco import load_universal
from segdemo.result import Segment, SegmentationResult, Task
from segdemo.result_files import write_result_files
from segdemo.thresholds import DEFAULT_THRESHOLDS

CATEGORIES = [
    {"id": 1, "name": "sky", "isthing": 0},
    {"id": 2, "name": "road", "isthing": 0},
    {"id": 5, "name": "car", "isthing": 1},
    {"id": 9, "name": "person", "isthing": 1},
]
SIZE = (64, 80)


def _scene(rng):
    """(HxW segment ids, segments_info) of one picture."""
    h, w = SIZE
    ids = np.zeros(SIZE, np.int64)
    horizon = int(rng.integers(20, 40))
    ids[:horizon], ids[horizon:] = 1, 2
    info = [
        {"id": 1, "category_id": 1, "iscrowd": 0},
        {"id": 2, "category_id": 2, "iscrowd": 0},
    ]
    for k, category in enumerate((5, 9, 5)):
        bh, bw = (int(v) for v in rng.integers(8, 16, size=2))
        top, left = int(rng.integers(1, h - bh - 1)), 4 + 25 * k
        ids[top - 1 : top + bh + 1, left - 1 : left + bw + 1] = 0  # a void ring
        segment_id = 300 + 256 * k  # ids that need the G channel
        ids[top : top + bh, left : left + bw] = segment_id
        info.append({"id": segment_id, "category_id": category, "iscrowd": int(k == 2)})
    return ids, info


def write_panoptic_folder(root: Path, counts=(("train", 2), ("val", 3)), seed=0) -> dict:
    """A COCO panoptic folder; returns ``{name: (segment ids, segments_info)}`` of val."""
    rng = np.random.default_rng(seed)
    val = {}
    for split, n in counts:
        (root / split / "images").mkdir(parents=True)
        (root / split / "panoptic").mkdir()
        images, annotations = [], []
        for i in range(n):
            name = f"{split}{i}"
            ids, info = _scene(rng)
            photo = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
            Image.fromarray(photo).save(root / split / "images" / f"{name}.png")
            rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
            Image.fromarray(rgb).save(root / split / "panoptic" / f"{name}.png")
            images.append(
                {"id": i, "file_name": f"{name}.png", "height": SIZE[0], "width": SIZE[1]}
            )
            annotations.append({"image_id": i, "file_name": f"{name}.png", "segments_info": info})
            if split == "val":
                val[name] = (ids, info)
        doc = {"images": images, "annotations": annotations, "categories": CATEGORIES}
        (root / split / "panoptic.json").write_text(json.dumps(doc))
    return val


def write_ground_truth_as_predictions(folder: Path, val: dict, task: str) -> None:
    """What `predict` would write for a perfect model, through the same writer."""
    folder.mkdir(parents=True, exist_ok=True)
    to_class = {c["id"]: i for i, c in enumerate(CATEGORIES)}
    things = [c["id"] for c in CATEGORIES if c["isthing"]]
    for name, (ids, info) in val.items():
        label_map = np.zeros(SIZE, np.int32)
        segments = []
        for row in info:
            if task == "instance" and (row["category_id"] not in things or row["iscrowd"]):
                continue
            new_id = len(segments) + 1
            label_map[ids == row["id"]] = new_id
            class_id = to_class[row["category_id"]]
            if task == "instance":  # class ids among the things only
                class_id = things.index(row["category_id"])
            label = DEFAULT_ID2LABEL[to_class[row["category_id"]]]
            segments.append(Segment(new_id, label, class_id, 1.0, 0, (0, 0, 0, 0)))
        id2label = DEFAULT_ID2LABEL if task == "panoptic" else {0: "car", 1: "person"}
        result = SegmentationResult(Task(task), label_map, segments, id2label)
        write_result_files(folder, name, result, model_id="ground-truth")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("coco") / "data"
    return root, write_panoptic_folder(root)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return build_tiny("mask2former", tmp_path_factory.mktemp("m2f") / "model")


def evaluate(*argv) -> int:
    return main(["evaluate", *map(str, argv)])


def test_reader_sees_the_folder_as_written(data):
    splits = load_universal("panoptic", data_dir=data[0])
    assert splits.id2label == DEFAULT_ID2LABEL
    assert sorted(splits.thing_ids) == [2, 3]
    assert len(splits.val) == 3


def test_pred_dir_equal_to_ground_truth_is_pq_1(data, tmp_path, capsys):
    root, val = data
    write_ground_truth_as_predictions(tmp_path / "pred", val, "panoptic")
    out = tmp_path / "pq.json"
    code = evaluate(
        "--task", "panoptic", "--pred-dir", tmp_path / "pred", "--data-dir", root, "--out", out
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    report = json.loads(out.read_text())
    assert (report["pq"], report["sq"], report["rq"]) == (1.0, 1.0, 1.0)
    assert report["pq_things"] == 1.0 and report["pq_stuff"] == 1.0
    assert set(report["per_category"]) == {"sky", "road", "car", "person"}
    for row in report["per_category"].values():
        assert {row["pq"], row["sq"], row["rq"]} == {1.0}
        assert row["fp"] == row["fn"] == 0  # the predicted crowd car is absorbed, not FP
    assert report["per_category"]["car"]["tp"] == 3  # one non-crowd car per image
    assert {"task": "panoptic", "num_images": 3, "split": "val"}.items() <= report[
        "evaluation"
    ].items()
    assert "PQ 100.00" in printed.out and "wrote" in printed.out


def test_pred_dir_equal_to_ground_truth_is_ap_1(data, tmp_path, capsys):
    root, val = data
    write_ground_truth_as_predictions(tmp_path / "pred", val, "instance")
    out = tmp_path / "ap.json"
    code = evaluate(
        "--task", "instance", "--pred-dir", tmp_path / "pred", "--data-dir", root, "--out", out
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    report = json.loads(out.read_text())
    assert report["ap"] == pytest.approx(1.0) and report["ap50"] == pytest.approx(1.0)
    assert set(report["per_category"]) == {"car", "person"}  # a panoptic folder's things
    assert report["ap_large"] is None  # nothing above 96² pixels
    assert "AP 100.00" in printed.out


def test_pred_dir_misses_lower_pq(data, tmp_path, capsys):
    root, val = data
    write_ground_truth_as_predictions(tmp_path / "pred", val, "panoptic")
    # forget every person: FN only, so person PQ 0 and RQ of the others unchanged
    for path in (tmp_path / "pred").glob("*_segments.json"):
        summary = json.loads(path.read_text())
        labels = np.asarray(
            Image.open(path.with_name(path.name.replace("_segments.json", "_labels.png")))
        )
        for row in summary["segments"]:
            if row["label"] == "person":
                labels = np.where(labels == row["id"], 0, labels)
        summary["segments"] = [r for r in summary["segments"] if r["label"] != "person"]
        path.write_text(json.dumps(summary))
        Image.fromarray(labels.astype(np.uint8)).save(
            path.with_name(path.name.replace("_segments.json", "_labels.png"))
        )
    out = tmp_path / "pq.json"
    assert (
        evaluate(
            "--task", "panoptic", "--pred-dir", tmp_path / "pred", "--data-dir", root, "--out", out
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert {"pq": 0.0, "tp": 0, "fn": 3}.items() <= report["per_category"]["person"].items()
    assert report["pq"] == pytest.approx(0.75) and report["pq_things"] == pytest.approx(0.5)


def test_model_evaluates_panoptic(data, model, tmp_path, capsys):
    root, _ = data
    out = tmp_path / "pq.json"
    code = evaluate(
        "--task",
        "panoptic",
        "--model",
        model,
        "--data-dir",
        root,
        "--out",
        out,
        "--threshold",
        "0.3",
        "--mask-threshold",
        "0.4",  # the random model's mask probabilities stay within 0.41-0.58
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    report = json.loads(out.read_text())
    for key in ("pq", "sq", "rq", "pq_things", "pq_stuff"):
        assert report[key] is None or 0.0 <= report[key] <= 1.0
    assert set(report["per_category"]) == set(DEFAULT_ID2LABEL.values())
    evaluation = report["evaluation"]
    # no segdemo.json and no processor metadata: the dataset's things; stuff is fused
    assert evaluation["thing_ids_from"] == "dataset"
    assert evaluation["label_ids_to_fuse"] == [0, 1]
    assert evaluation["thresholds"] == {
        "threshold": 0.3,
        "mask_threshold": 0.4,
        "overlap_mask_area_threshold": DEFAULT_THRESHOLDS.overlap_mask_area_threshold,
    }
    per_class = report["per_category"].values()
    assert sum(r["tp"] + r["fp"] for r in per_class) > 0, "the random model predicted nothing"
    assert "PQ" in printed.out


def test_model_equals_its_saved_predictions(data, model, tmp_path, capsys):
    # the checkpoint's segdemo.json lists every class as a thing: nothing fused, so `predict`
    # (which never fuses) writes what `evaluate --model` scores
    root, _ = data
    local = tmp_path / "model"
    local.mkdir()
    for path in model.iterdir():
        (local / path.name).write_bytes(path.read_bytes())
    (local / "segdemo.json").write_text(
        json.dumps(
            {"thing_ids": [0, 1, 2, 3], "thresholds": {"threshold": 0.3, "mask_threshold": 0.4}}
        )
    )
    images = sorted((root / "val" / "images").iterdir())
    assert (
        main(
            [
                "predict",
                *map(str, images),
                "--model",
                str(local),
                "--task",
                "panoptic",
                "--out",
                str(tmp_path / "pred"),
            ]
        )
        == 0
    )
    direct, saved = tmp_path / "direct.json", tmp_path / "saved.json"
    assert (
        evaluate("--task", "panoptic", "--model", local, "--data-dir", root, "--out", direct) == 0
    )
    assert (
        evaluate(
            "--task",
            "panoptic",
            "--pred-dir",
            tmp_path / "pred",
            "--data-dir",
            root,
            "--out",
            saved,
        )
        == 0
    )
    capsys.readouterr()
    direct_report, saved_report = json.loads(direct.read_text()), json.loads(saved.read_text())
    assert direct_report["evaluation"]["thing_ids_from"] == "segdemo.json"
    assert direct_report["evaluation"]["label_ids_to_fuse"] == []
    direct_report.pop("evaluation"), saved_report.pop("evaluation")
    assert direct_report == saved_report
    assert sum(r["tp"] + r["fp"] for r in saved_report["per_category"].values()) > 0


def test_model_evaluates_instance(data, tmp_path, capsys):
    root, _ = data
    things = build_tiny("mask2former", tmp_path / "things", id2label={0: "car", 1: "person"})
    out = tmp_path / "ap.json"
    code = evaluate(
        "--task",
        "instance",
        "--model",
        things,
        "--data-dir",
        root,
        "--out",
        out,
        "--threshold",
        "0.1",
        "--mask-threshold",
        "0.4",
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    report = json.loads(out.read_text())
    assert set(report["per_category"]) == {"car", "person"}
    assert 0.0 <= report["ap"] <= 1.0
    assert "AP50" in printed.out


@pytest.mark.parametrize(
    ("id2label", "message"),
    [
        ({0: "sky", 1: "road", 2: "car"}, "predicts 3 classes but the dataset has 4"),
        (
            {0: "sky", 1: "road", 2: "person", 3: "car"},
            "class 2 is 'person' but the dataset's is 'car'",
        ),
    ],
)
def test_model_with_other_classes_is_one_line(data, tmp_path, capsys, id2label, message):
    other = build_tiny("mask2former", tmp_path / "other", id2label=id2label)
    code = evaluate(
        "--task", "panoptic", "--model", other, "--data-dir", data[0], "--out", tmp_path / "x.json"
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.json").exists()


def _bad_pred_dir(folder: Path, val: dict, case: str) -> None:
    write_ground_truth_as_predictions(folder, val, "panoptic")
    name = sorted(val)[0]
    listing = folder / f"{name}_segments.json"
    summary = json.loads(listing.read_text())
    if case == "missing":
        (folder / f"{name}_labels.png").unlink()
    elif case == "semantic":
        summary["task"] = "semantic"
    elif case == "renamed":
        summary["segments"][0]["label"] = "building"
    elif case == "unlisted":
        summary["segments"] = summary["segments"][1:]
    elif case == "broken":
        listing.write_text("{")
        return
    listing.write_text(json.dumps(summary))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            "missing",
            "_labels.png: missing prediction; run `python -m segdemo predict --task panoptic`",
        ),
        ("semantic", "predictions are semantic; run `python -m segdemo predict --task panoptic`"),
        ("renamed", "segment 1 is 'building' (label_id 0) but the dataset's class 0 is 'sky'"),
        ("unlisted", "predicted segment id 1 is in the map but not in its segments"),
        ("broken", "_segments.json: cannot read it"),
    ],
)
def test_bad_pred_dir_is_one_line(data, tmp_path, capsys, case, message):
    root, val = data
    _bad_pred_dir(tmp_path / "pred", val, case)
    code = evaluate(
        "--task",
        "panoptic",
        "--pred-dir",
        tmp_path / "pred",
        "--data-dir",
        root,
        "--out",
        tmp_path / "x.json",
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # semantic-only flags on a COCO folder
        (["--task", "panoptic", "--ignore-index", "11"], "apply to --task semantic"),
        # thresholds with saved predictions
        (["--task", "panoptic", "--threshold", "0.5"], "apply to --model"),
        # thresholds on the semantic task
        (["--threshold", "0.5"], "apply to --task instance|panoptic"),
        # a split COCO folders do not have
        (["--task", "panoptic", "--split", "test"], "--split test"),
    ],
)
def test_flags_that_do_not_apply_are_one_line(data, tmp_path, capsys, argv, message):
    code = evaluate(
        *argv, "--pred-dir", tmp_path, "--data-dir", data[0], "--out", tmp_path / "x.json"
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err, err


def test_missing_val_panoptic_json_names_the_file(tmp_path, capsys):
    root = tmp_path / "data"
    write_panoptic_folder(root)
    (root / "val" / "panoptic.json").unlink()
    code = evaluate(
        "--task",
        "panoptic",
        "--pred-dir",
        tmp_path,
        "--data-dir",
        root,
        "--out",
        tmp_path / "x.json",
    )
    err = capsys.readouterr().err
    assert code == 2 and "panoptic.json" in err and len(err.strip().splitlines()) == 1, err


def test_val_groups_score_the_named_images_of_train_and_val_pooled(data, tmp_path, capsys):
    root, val = data
    # the ground truth of train0 and val1 as predictions: scored alone, PQ 1
    pred = tmp_path / "pred"
    write_ground_truth_as_predictions(pred, {"val1": val["val1"]}, "panoptic")
    train_gt = {"train0": _first_train_scene(root)}
    write_ground_truth_as_predictions(pred, train_gt, "panoptic")
    out = tmp_path / "pq.json"
    argv = ["--task", "panoptic", "--pred-dir", pred, "--data-dir", root, "--out", out]
    assert evaluate(*argv, "--val-groups", "train0,val1") == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report["pq"] == pytest.approx(1.0)
    assert report["evaluation"]["num_images"] == 2
    assert report["evaluation"]["val_groups"] == ["train0", "val1"]
    capsys.readouterr()
    assert evaluate(*argv, "--val-groups", "val9") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--val-groups val9" in err and "train0" in err


def _first_train_scene(root: Path) -> tuple[np.ndarray, list]:
    """Segment ids and segments_info of train0 as the folder stores them."""
    doc = json.loads((root / "train" / "panoptic.json").read_text())
    png = np.asarray(Image.open(root / "train" / "panoptic" / "train0.png"), np.int64)
    ids = png[..., 0] + 256 * png[..., 1] + 65536 * png[..., 2]
    return ids, doc["annotations"][0]["segments_info"]
