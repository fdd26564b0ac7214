"""train/run.py --task panoptic|instance: it learns, exports what the app needs, refuses bad
input before step 1, resumes exactly, and its 2-process evaluation equals one process.

Synthetic COCO panoptic folders (tests/synthetic_panoptic.py); the ``mask2former-resnet-s``
preset and tiny random Mask2Former/MaskFormer/OneFormer checkpoints; CPU, one thread.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from builders import build_tiny
from safetensors.torch import load_file
from synthetic_panoptic import ID2LABEL, write_panoptic_folder
from test_train import (  # one_thread: test_train's autouse one-BLAS-thread fixture
    ROOT,
    _free_port,
    one_thread,  # noqa: F401
    subprocess_env,
)

from segdemo.checkpoint import load_checkpoint
from segdemo.registry import discover_local
from segdemo.result import Task
from train import modeling, run

SMALL = ["--image-size", "64", "64", "--crop-size", "64", "--num-workers", "0"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """12 train / 5 val synthetic panoptic images at 64x64."""
    return write_panoptic_folder(
        tmp_path_factory.mktemp("panoptic") / "shapes", n_train=12, n_val=5, size=(64, 64)
    )


def test_learns_synthetic_panoptic_to_pq_08(tmp_path):
    """The issue's learning bar: stuff background plus discs/boxes as instances, PQ >= 0.8."""
    data_dir = write_panoptic_folder(tmp_path / "learn", n_train=48, n_val=12, size=(128, 128))
    out = tmp_path / "checkpoints" / "learned"
    result = run.main(
        ["--task", "panoptic", "--model", "mask2former-resnet-s", "--data-dir", str(data_dir)]
        + ["--output-dir", str(out), "--image-size", "128", "--crop-size", "128"]
        + ["--scale-range", "0.9", "1.1", "--jitter", "0", "0", "0", "0", "--num-workers", "0"]
        + ["--max-steps", "300", "--eval-every", "300", "--batch-size", "8", "--lr", "3e-4"]
        + ["--warmup-steps", "20"]
    )
    assert result["best"]["pq"] >= 0.8, result["history"]["eval"]
    report = json.loads((out / "eval_results.json").read_text())
    assert report["pq_things"] >= 0.7 and report["pq_stuff"] >= 0.7, report


def test_exports_what_the_app_needs(shapes, tmp_path):
    out = tmp_path / "checkpoints" / "pan"
    result = run.main(
        [*SMALL, "--task", "panoptic", "--model", "mask2former-resnet-s"]
        + ["--data-dir", str(shapes), "--output-dir", str(out), "--max-steps", "2"]
        + ["--batch-size", "4", "--threshold", "0.3", "--palette", "generated"]
    )
    assert result["step"] == 2 and set(result["best"]) == {"step", "pq"}
    model, processor = load_checkpoint(out)
    assert type(model).__name__ == "Mask2FormerForUniversalSegmentation"
    assert model.config.id2label == ID2LABEL
    assert dict(processor.size) == {"height": 64, "width": 64}
    extra = json.loads((out / "segdemo.json").read_text())
    assert extra["thing_ids"] == [2, 3]  # disc, box: by sorted COCO id (11, 20)
    assert extra["thresholds"] == {
        "threshold": 0.3,
        "mask_threshold": 0.5,
        "overlap_mask_area_threshold": 0.5,
    }
    report = json.loads((out / "eval_results.json").read_text())
    assert {"pq", "sq", "rq", "pq_things", "pq_stuff", "per_category"} <= set(report)
    assert set(report["per_category"]) == set(ID2LABEL.values())
    for name in ("curves.png", "per_class_pq.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (spec,) = discover_local(out.parent)
    assert set(spec.tasks) == {Task.SEMANTIC, Task.INSTANCE, Task.PANOPTIC}


def test_instance_task_trains_on_things_and_reports_mask_ap(shapes, tmp_path):
    out = tmp_path / "inst"
    result = run.main(
        [*SMALL, "--task", "instance", "--model", "mask2former-resnet-s"]
        + ["--data-dir", str(shapes), "--output-dir", str(out), "--max-steps", "2"]
        + ["--batch-size", "4"]
    )
    assert set(result["best"]) == {"step", "ap"}
    model, _ = load_checkpoint(out)
    assert model.config.id2label == {0: "disc", 1: "box"}  # the panoptic layout's things only
    report = json.loads((out / "eval_results.json").read_text())
    assert {"ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "per_category"} <= set(
        report
    )
    assert json.loads((out / "segdemo.json").read_text())["thing_ids"] == [0, 1]


def test_maskformer_trains_and_oneformer_stops_in_one_line(shapes, tmp_path):
    maskformer = build_tiny("maskformer", tmp_path / "mf", id2label={0: "x", 1: "y"})
    result = run.main(
        [*SMALL, "--task", "panoptic", "--model", str(maskformer), "--data-dir", str(shapes)]
        + ["--output-dir", str(tmp_path / "mf-out"), "--max-steps", "1", "--batch-size", "4"]
    )
    assert result["step"] == 1
    assert load_checkpoint(tmp_path / "mf-out")[0].config.id2label == ID2LABEL  # new head
    oneformer = build_tiny("oneformer", tmp_path / "of")
    with pytest.raises(SystemExit, match=r"--model .*oneformer model: segdemo cannot train"):
        run.main(
            [*SMALL, "--task", "panoptic", "--model", str(oneformer), "--data-dir", str(shapes)]
            + ["--output-dir", str(tmp_path / "of-out")]
        )
    assert not (tmp_path / "of-out").exists()


@pytest.mark.parametrize(
    "task, model, message",
    [
        ("panoptic", "upernet-resnet-s", "needs a Mask2Former or MaskFormer model"),
        ("semantic", "mask2former-resnet-s", "train it with --task panoptic or instance"),
    ],
)
def test_task_and_model_must_fit(shapes, tmp_path, task, model, message):
    with pytest.raises(SystemExit, match=message):
        run.main(
            [*SMALL, "--task", task, "--model", model, "--data-dir", str(shapes)]
            + ["--output-dir", str(tmp_path / "o")]
        )


def test_bad_input_stops_before_step_one_naming_the_file(shapes, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(shapes, broken)
    (broken / "val" / "panoptic" / "val_002.png").unlink()
    with pytest.raises(SystemExit, match=r"dataset error: .*val_002\.png"):
        run.main(
            [*SMALL, "--task", "panoptic", "--model", "mask2former-resnet-s"]
            + ["--data-dir", str(broken), "--output-dir", str(tmp_path / "o")]
        )
    assert not (tmp_path / "o").exists()


def test_init_backbone_from_copies_every_backbone_tensor(tmp_path):
    semantic, _ = modeling.load_start_model("upernet-resnet-s", {0: "a", 1: "b"}, None, (64, 64))
    donor = tmp_path / "donor"
    from segdemo.checkpoint import save_checkpoint
    from segdemo.presets import make_processor

    save_checkpoint(donor, semantic, make_processor((64, 64)))
    model, _ = modeling.load_start_model(
        "mask2former-resnet-s",
        ID2LABEL,
        None,
        (64, 64),
        task="panoptic",
        init_backbone_from=str(donor),
    )
    want = modeling.backbone_of(semantic).state_dict()
    got = modeling.backbone_of(model).state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    convnext, _ = modeling.load_start_model("upernet-convnext-n", {0: "a"}, None, (64, 64))
    other = tmp_path / "convnext"
    save_checkpoint(other, convnext, make_processor((64, 64)))
    with pytest.raises(Exception, match="its backbone does not fit the model's"):
        modeling.load_start_model(
            "mask2former-resnet-s",
            ID2LABEL,
            None,
            (64, 64),
            task="panoptic",
            init_backbone_from=str(other),
        )


def test_a_resumed_panoptic_run_ends_where_an_uninterrupted_run_ends(shapes, tmp_path, capsys):
    """Resume restores model, optimizer, scheduler and RNGs (Mask2Former's loss samples
    random points): from a state at an epoch boundary the resumed run replays the
    uninterrupted run's steps, lr and losses to float rounding (see test_train.py for the
    SIGKILL windows and mid-epoch states)."""
    # 12 images, batch 4, drop_last: 3 steps per epoch; a state at every epoch's end
    args = [*SMALL, "--task", "panoptic", "--model", "mask2former-resnet-s"]
    args += ["--data-dir", str(shapes), "--max-steps", "6", "--save-every", "3"]
    args += ["--save-total-limit", "5", "--eval-every", "100", "--log-every", "1"]
    args += ["--batch-size", "4", "--warmup-steps", "2"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    uninterrupted = run.main([*args, "--output-dir", str(whole)])
    shutil.copytree(whole / "state" / "step-3", cut / "state" / "step-3")
    capsys.readouterr()
    resumed = run.main([*args, "--output-dir", str(cut)])
    assert "at step 3 (epoch 1)" in capsys.readouterr().out
    train, want = resumed["history"]["train"], uninterrupted["history"]["train"]
    assert [r["step"] for r in train] == list(range(1, 7))
    assert [r["lr"] for r in train] == pytest.approx([r["lr"] for r in want], abs=1e-12)
    assert [r["loss"] for r in train] == pytest.approx([r["loss"] for r in want], rel=1e-4)
    got, expected = load_file(cut / "model.safetensors"), load_file(whole / "model.safetensors")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)


def test_two_process_panoptic_evaluation_equals_one_process(shapes, tmp_path):
    out = tmp_path / "checkpoints" / "ddp"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    launch += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    # 5 val images, eval batch 2 on 2 processes: accelerate pads the last batch
    args = [*SMALL, "--task", "panoptic", "--model", "mask2former-resnet-s"]
    args += ["--data-dir", str(shapes), "--output-dir", str(out), "--max-steps", "4"]
    args += ["--batch-size", "2", "--eval-batch-size", "2", "--threshold", "0.0"]
    args += ["--mask-threshold", "0.3", "--lr", "1e-3"]
    done = subprocess.run(
        [*launch, str(ROOT / "train" / "run.py"), *args],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=400,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = json.loads((out / "eval_results.json").read_text())
    single = run.main(
        [*SMALL, "--task", "panoptic", "--model", str(out), "--data-dir", str(shapes)]
        + ["--eval-only", "--eval-batch-size", "1", "--threshold", "0.0", "--mask-threshold", "0.3"]
    )
    assert single["per_category"] == ddp["per_category"]
    assert single["pq"] == ddp["pq"]
    counts = [
        ddp["per_category"][n]["tp"] + ddp["per_category"][n]["fn"] for n in ID2LABEL.values()
    ]
    assert sum(counts) > 5  # the five val images' segments were all counted, once
    assert np.isfinite(sum(counts))


def test_a_hub_id_fine_tunes_with_a_new_label_set(shapes, tmp_path, monkeypatch):
    """``--model org/name`` resolves through the HF cache (offline here) by the one resolver;
    the checkpoint's 4 classes become the dataset's with a new class head, the rest kept."""
    from builders import make_hf_cache
    from huggingface_hub import constants

    tiny = build_tiny("mask2former", tmp_path / "m2f", id2label={0: "a", 1: "b", 2: "c"})
    cache = tmp_path / "hub"
    make_hf_cache(cache, "someone/m2f-tiny", tiny)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, _ = modeling.load_start_model(
        "someone/m2f-tiny", ID2LABEL, (64, 64), (64, 64), task="panoptic"
    )
    assert model.config.id2label == ID2LABEL
    donor = load_checkpoint(tiny)[0].state_dict()
    kept = [k for k in donor if "class_predictor" not in k and "empty_weight" not in k]
    got = model.state_dict()
    assert kept and all(torch.equal(got[k], donor[k]) for k in kept)
    assert got["class_predictor.weight"].shape[0] == len(ID2LABEL) + 1
    with pytest.raises(SystemExit, match="--model someone/missing"):
        run.main(
            [*SMALL, "--task", "panoptic", "--model", "someone/missing", "--data-dir", str(shapes)]
            + ["--output-dir", str(tmp_path / "o")]
        )
