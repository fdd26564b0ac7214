"""train/run.py end to end on synthetic shapes: it learns, resumes after a kill, and its
2-process DDP evaluation equals single-process evaluation of the exported checkpoint.

Tiny random-init models on 48x64 images, CPU, one BLAS thread (two threads on two busy
cores were 15x slower per step here).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import build_tiny, keep_only_pickle_weights
from PIL import Image
from safetensors.torch import load_file
from synthetic import ID2LABEL, write_folder
from torch.optim.optimizer import register_optimizer_step_pre_hook

from segdemo import presets
from segdemo.checkpoint import load_checkpoint
from segdemo.registry import discover_local
from train import outputs, run

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--image-size", "96", "128", "--crop-size", "96", "128", "--num-workers", "0"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """14 train / 5 val synthetic pairs and a tiny SegFormer checkpoint with other labels."""
    root = tmp_path_factory.mktemp("train")
    data_dir = write_folder(root / "shapes", n_train=14, n_val=5)
    tiny = build_tiny("segformer", root / "tiny", id2label={0: "a", 1: "b"}, image_size=64)
    return data_dir, tiny


def subprocess_env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def test_learns_and_exports_a_checkpoint_the_app_discovers(shapes, tmp_path):
    data_dir, tiny = shapes
    out = tmp_path / "checkpoints" / "shapes"
    result = run.main(
        [*FAST, "--model", str(tiny), "--data-dir", str(data_dir), "--output-dir", str(out)]
        + ["--max-steps", "150", "--eval-every", "50", "--batch-size", "4", "--lr", "3e-3"]
        + ["--palette", "camvid", "--title", "Shapes"]
    )
    assert result["step"] == 150
    assert result["best"]["mean_iou"] >= 0.9, result["history"]["eval"]

    # OUTPUT is the best model, loadable while state/ holds resume states
    model, processor = load_checkpoint(out)
    assert model.config.id2label == ID2LABEL and model.config.semantic_loss_ignore_index == 255
    assert processor.do_reduce_labels is False
    assert outputs.latest_state(out).name == "step-150"
    report = json.loads((out / "eval_results.json").read_text())
    assert report["step"] == result["best"]["step"]
    assert report["mean_iou"] == pytest.approx(result["best"]["mean_iou"])
    assert set(report["per_category_iou"]) == set(ID2LABEL.values())
    history = json.loads((out / "history.json").read_text())
    assert [r["step"] for r in history["eval"]] == [50, 100, 150]
    for name in ("curves.png", "per_class_iou.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "training_config.json").read_text())["total_steps"] == 150

    (spec,) = discover_local(out.parent)
    assert (spec.id, spec.palette, spec.title) == ("local/shapes", "camvid", "Shapes")


KILLER = """
import os, signal, sys
import accelerate

original = accelerate.Accelerator.save_state
calls = []


def save_state(self, *args, **kwargs):
    result = original(self, *args, **kwargs)
    calls.append(1)
    if len(calls) == 2:  # the second state is written but not yet published: die now
        os.kill(os.getpid(), signal.SIGKILL)
    return result


accelerate.Accelerator.save_state = save_state
from train import run

run.main(sys.argv[1:])
"""


def test_a_killed_run_resumes_and_finishes_with_the_same_total_steps(shapes, tmp_path, capsys):
    data_dir, tiny = shapes
    out = tmp_path / "run"
    # 14 images, batch 4, drop_last: 3 steps per epoch, so step 4 is in the middle of epoch 1
    args = [*FAST, "--model", str(tiny), "--data-dir", str(data_dir), "--output-dir", str(out)]
    args += ["--max-steps", "10", "--save-every", "4", "--eval-every", "100", "--log-every", "1"]
    args += ["--batch-size", "4", "--lr", "3e-3"]
    script = tmp_path / "killed_run.py"
    script.write_text(KILLER)
    killed = subprocess.run(
        [sys.executable, str(script), *args],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    # step 8 was half-done: it must not count as a state
    assert (out / "state" / "step-8.tmp").is_dir() and not (out / "state" / "step-8").exists()
    assert outputs.latest_state(out).name == "step-4"
    state = outputs.read_trainer_state(outputs.latest_state(out))
    assert (state["step"], state["epoch"], state["batches_done"]) == (4, 1, 1)

    saved = load_file(outputs.latest_state(out) / "model.safetensors")  # the weights at step 4
    first_step = []  # what the optimizer holds when the resumed run takes its first step
    hook = register_optimizer_step_pre_hook(
        lambda optimizer, *_: first_step.append(_optimizer_snapshot(optimizer)) or None
    )
    try:
        result = run.main(args)  # the same command again resumes by default
    finally:
        hook.remove()
    assert "at step 4 (epoch 1)" in capsys.readouterr().out
    assert result["step"] == 10
    assert [r["step"] for r in result["history"]["train"]] == list(range(1, 11))  # each step once
    assert sorted(p.name for p in (out / "state").iterdir()) == [
        "step-10",
        "step-8",
    ]  # limit 2, no temps
    assert outputs.read_trainer_state(out / "state" / "step-10")["step"] == 10
    load_checkpoint(out)

    # what resuming promises, beyond the step count:
    # the weights the resumed run starts from are the saved ones (not the starting model's) ...
    assert first_step, "the resumed run took no optimizer step"
    names = [name for name, _ in load_checkpoint(out)[0].named_parameters()]
    params, steps = first_step[0]
    assert len(params) == len(names)
    changed = [n for n, v in zip(names, params, strict=True) if not torch.equal(v, saved[n])]
    assert not changed, f"{len(changed)} of {len(names)} parameters are not the saved ones"
    # ... and so is the optimizer: AdamW's moments and step count continue from step 4
    assert steps == {4.0}
    state = torch.load(out / "state" / "step-10" / "optimizer.bin", weights_only=True)
    assert {float(s["step"]) for s in state["state"].values()} == {10.0}
    # the learning-rate schedule continues across the kill (poly, power 1, no warm-up)
    lrs = [r["lr"] for r in result["history"]["train"]]
    assert lrs == pytest.approx([3e-3 * (1 - s / 10) for s in range(1, 11)], abs=1e-12)

    # nothing left to do: running it again changes nothing
    assert run.main(args)["step"] == 10


def _optimizer_snapshot(optimizer) -> tuple[list[torch.Tensor], set[float]]:
    """(copies of the parameters, the set of AdamW step counts) of ``optimizer`` right now."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    steps = {
        float(optimizer.state[p]["step"]) if "step" in optimizer.state[p] else 0.0 for p in params
    }
    return [p.detach().clone() for p in params], steps


def test_a_run_resumed_at_an_epoch_boundary_ends_where_an_uninterrupted_run_ends(
    shapes, tmp_path, capsys
):
    """Resuming restores model, optimizer, scheduler and RNGs: from a state saved at an epoch
    boundary the resumed run replays the uninterrupted run's last steps to float rounding.

    (From a state saved mid-epoch the augmentation draws differ, as docs/training.md says:
    accelerate's DataLoader has already fetched the next batch when the state is saved.)
    """
    data_dir, tiny = shapes
    # 14 images, batch 4, drop_last: 3 steps per epoch; a state at every epoch's end
    args = [*FAST, "--model", str(tiny), "--data-dir", str(data_dir), "--max-steps", "10"]
    args += ["--save-every", "3", "--save-total-limit", "10", "--eval-every", "100"]
    args += ["--log-every", "1", "--batch-size", "4", "--lr", "3e-3"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    uninterrupted = run.main([*args, "--output-dir", str(whole)])
    # the same run as a kill after step 5 leaves it: the newest state is step 3
    shutil.copytree(whole / "state" / "step-3", cut / "state" / "step-3")
    capsys.readouterr()
    resumed = run.main([*args, "--output-dir", str(cut)])
    assert "at step 3 (epoch 1)" in capsys.readouterr().out

    def losses(result):
        return [r["loss"] for r in result["history"]["train"]]

    assert [r["step"] for r in resumed["history"]["train"]] == list(range(1, 11))
    assert losses(resumed) == pytest.approx(losses(uninterrupted), rel=1e-5)
    for name in ("state/step-10/model.safetensors", "model.safetensors"):
        want, got = load_file(whole / name), load_file(cut / name)
        assert want.keys() == got.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)
    assert resumed["best"] == pytest.approx(uninterrupted["best"])


def _relabel(source: Path, target: Path, mapping) -> Path:
    """A copy of the folder dataset ``source`` with every annotation's raw values mapped."""
    shutil.copytree(source, target)
    for path in target.glob("*/annotations/*.png"):
        raw = np.asarray(Image.open(path))
        Image.fromarray(mapping(raw).astype(np.uint8)).save(path)
    return target


# one row per raw convention: how the raw values differ from train ids, and the flags that
# say so. Each dataset holds the same pictures and, once converted, the same labels.
LABEL_CONVENTIONS = [
    # ADE20K style: raw 0 = "other" (ignored), class v stored as v + 1
    ("reduce-labels", lambda raw: np.where(raw == 255, 0, raw + 1), ["--reduce-labels"]),
    # CamVid style: void stored as 3 (one past the classes), not 255
    ("ignore-index", lambda raw: np.where(raw == 255, 3, raw), ["--ignore-index", "3"]),
]


@pytest.mark.parametrize(
    "convention, mapping, flags", LABEL_CONVENTIONS, ids=[row[0] for row in LABEL_CONVENTIONS]
)
def test_label_flags_train_exactly_like_train_ids(shapes, tmp_path, convention, mapping, flags):
    """``--reduce-labels`` / ``--ignore-index`` convert raw annotations to the train ids the
    loss and the metric see: the run equals one on the same data stored as train ids."""
    data_dir, tiny = shapes
    raw_dir = _relabel(data_dir, tmp_path / convention, mapping)
    args = [*FAST, "--model", str(tiny), "--max-steps", "3", "--eval-every", "3"]
    args += ["--log-every", "1", "--batch-size", "4", "--lr", "3e-3"]
    plain = run.main([*args, "--data-dir", str(data_dir), "--output-dir", str(tmp_path / "ids")])
    flagged = run.main(
        [*args, *flags, "--data-dir", str(raw_dir), "--output-dir", str(tmp_path / "raw")]
    )
    assert [r["loss"] for r in flagged["history"]["train"]] == pytest.approx(
        [r["loss"] for r in plain["history"]["train"]], rel=1e-6
    )
    want, got = plain["history"]["eval"][-1], flagged["history"]["eval"][-1]
    assert got["mean_iou"] == pytest.approx(want["mean_iou"], rel=1e-9)
    assert got["per_category_iou"] == pytest.approx(want["per_category_iou"], rel=1e-9)
    # without the flag the raw values are not class ids: refused before any step
    with pytest.raises(SystemExit, match="is not a class id"):
        run.main([*args, "--data-dir", str(raw_dir), "--output-dir", str(tmp_path / "no")])


def test_a_batch_of_only_ignored_pixels_gives_a_zero_loss_not_nan(shapes, tmp_path):
    """Crops whose pixels are all void (here: every training annotation) would give
    cross-entropy 0/0 = NaN; the step trains on a zero loss instead and the run goes on."""
    data_dir, tiny = shapes
    void = tmp_path / "void"
    shutil.copytree(data_dir, void)
    for path in (void / "train" / "annotations").glob("*.png"):
        raw = np.asarray(Image.open(path))
        Image.fromarray(np.full_like(raw, 255)).save(path)
    result = run.main(
        [*FAST, "--model", str(tiny), "--data-dir", str(void), "--output-dir", str(tmp_path / "o")]
        + ["--max-steps", "2", "--log-every", "1", "--batch-size", "4"]
    )
    assert [r["loss"] for r in result["history"]["train"]] == [0.0, 0.0]
    model, _ = load_checkpoint(tmp_path / "o")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("weights", [[], ["--ema-decay", "0.9"]], ids=["model", "ema"])
def test_two_process_ddp_evaluation_equals_single_process_evaluation(
    shapes, tmp_path, monkeypatch, weights
):
    """Each process scores its share of val with the main process's BatchNorm statistics:
    the gathered score is the exported checkpoint's, with or without the weight EMA."""
    data_dir, tiny = shapes
    out = tmp_path / "checkpoints" / "ddp"
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
    ]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(_free_port())]
    # 5 val images on 2 processes: accelerate pads the last batch with a duplicate
    args = [*FAST, "--model", str(tiny), "--data-dir", str(data_dir), "--output-dir", str(out)]
    args += ["--max-steps", "12", "--batch-size", "2", "--eval-batch-size", "1", "--lr", "3e-3"]
    args += weights
    done = subprocess.run(
        [*launch, str(ROOT / "train" / "run.py"), *args],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=400,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [s.id for s in discover_local(out.parent)] == ["local/ddp"]  # one checkpoint
    config = json.loads((out / "training_config.json").read_text())
    assert config["num_processes"] == 2
    assert sorted(p.name for p in outputs.latest_state(out).glob("random_states_*")) == [
        "random_states_0.pkl",
        "random_states_1.pkl",
    ]
    ddp = json.loads((out / "eval_results.json").read_text())

    # the same evaluation code in one process
    single = run.main(
        [
            *FAST,
            "--model",
            str(out),
            "--data-dir",
            str(data_dir),
            "--eval-only",
            "--eval-batch-size",
            "1",
        ]
    )
    assert single["mean_iou"] == ddp["mean_iou"]
    # --eval-only returns the same report as eval_results.json: per-class IoU keyed by name
    assert single["per_category_iou"] == ddp["per_category_iou"]

    # and the CLI's evaluation (segdemo.segment, the app's inference path)
    from segdemo.evaluate import evaluate_folder, model_predictor

    monkeypatch.setenv("SEGDEMO_ALLOW_ANY_MODEL", "1")
    predict, _ = model_predictor(str(out))
    matrix, _, count = evaluate_folder(data_dir, predict)
    assert count == 5
    assert matrix.compute()["mean_iou"] == ddp["mean_iou"]


def test_hf_dataset_input(shapes, tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image
    from synthetic import make_pair

    rng = np.random.default_rng(3)
    rows = [make_pair(rng) for _ in range(6)]
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    table = datasets.Dataset.from_dict(
        {
            "image": [Image.fromarray(i) for i, _ in rows],
            "annotation": [Image.fromarray(a) for _, a in rows],
        },
        features=features,
    )
    folder = tmp_path / "hf"
    datasets.DatasetDict(
        {"train": table.select(range(4)), "validation": table.select(range(4, 6))}
    ).save_to_disk(str(folder))
    (folder / "id2label.json").write_text(json.dumps(ID2LABEL))
    out = tmp_path / "out"
    result = run.main(
        [*FAST, "--model", str(shapes[1]), "--dataset", str(folder), "--output-dir", str(out)]
        + ["--max-steps", "2", "--batch-size", "2"]
    )
    assert result["step"] == 2 and len(result["history"]["eval"]) == 1
    load_checkpoint(out)


@pytest.mark.parametrize("name", [n for n, p in presets.PRESETS.items() if not p.universal])
def test_presets_build_with_the_ignore_index_in_their_loss(name):
    torch.manual_seed(0)
    model, processor = presets.build_preset(name, ID2LABEL, (64, 64))
    labels = torch.randint(0, len(ID2LABEL), (2, 64, 64))
    loss = model(pixel_values=torch.randn(2, 3, 64, 64), labels=labels).loss
    ignored = labels.clone()
    ignored[:, :32] = 255
    loss_ignored = model(pixel_values=torch.randn(2, 3, 64, 64), labels=ignored).loss
    assert torch.isfinite(loss) and torch.isfinite(loss_ignored)
    assert model.config.id2label == ID2LABEL
    assert dict(processor.size) == {"height": 64, "width": 64}


def test_preset_training_run(shapes, tmp_path):
    data_dir, _ = shapes
    out = tmp_path / "preset"
    result = run.main(
        ["--model", "upernet-resnet-s", "--data-dir", str(data_dir), "--output-dir", str(out)]
        + ["--crop-size", "48", "64", "--num-workers", "0", "--max-steps", "2", "--batch-size", "2"]
    )
    assert result["step"] == 2
    model, processor = load_checkpoint(out)
    assert type(model).__name__ == "UperNetForSemanticSegmentation"
    assert dict(processor.size) == {"height": 48, "width": 64}  # presets default to the crop size


@pytest.mark.parametrize(
    "extra, env, message",
    [
        ([], {}, "give the data"),  # neither --data-dir nor --dataset
        (["--data-dir", "x", "--push-to-hub"], {"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
    ],
)
def test_argument_errors(extra, env, message, monkeypatch, capsys):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit):
        run.parse_args(extra)
    assert message in capsys.readouterr().err


def test_dataset_errors_stop_before_training(shapes, tmp_path):
    data_dir, tiny = shapes
    broken = write_folder(tmp_path / "broken", n_train=3, n_val=1)
    (broken / "train" / "annotations" / "train_001.png").unlink()
    with pytest.raises(
        SystemExit, match=r"dataset error: .*train_001\.png: image has no annotation"
    ):
        run.main(
            ["--model", str(tiny), "--data-dir", str(broken), "--output-dir", str(tmp_path / "o")]
        )
    assert not (tmp_path / "o").exists()


def test_eval_only_never_evaluates_a_new_head(shapes):
    data_dir, tiny = shapes  # tiny predicts 2 classes, the dataset has 3
    with pytest.raises(SystemExit, match="predicts 2 classes but the dataset has 3"):
        run.main(["--model", str(tiny), "--data-dir", str(data_dir), "--eval-only"])


def test_fine_tuning_pickle_weights_needs_the_operator_opt_in(shapes, tmp_path, monkeypatch):
    """A checkpoint with other classes is loaded through the same weights check as the app."""
    data_dir, tiny = shapes
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny, pickled)
    keep_only_pickle_weights(pickled)
    monkeypatch.delenv("SEGDEMO_ALLOW_PICKLE", raising=False)
    argv = ["--model", str(pickled), "--data-dir", str(data_dir), "--max-steps", "1", *FAST]
    with pytest.raises(SystemExit, match="only pickle weights .*SEGDEMO_ALLOW_PICKLE=1"):
        run.main([*argv, "--output-dir", str(tmp_path / "refused")])
    assert not (tmp_path / "refused").exists()
    monkeypatch.setenv("SEGDEMO_ALLOW_PICKLE", "1")
    model, _ = run.load_start_model(str(pickled), ID2LABEL, None, (96, 128))
    assert model.config.num_labels == len(ID2LABEL)
    # the backbone came from the pickle, not from a fresh init
    want = load_checkpoint(tiny)[0].state_dict()
    got = model.state_dict()
    backbone = [k for k in want if k.startswith("segformer.")]
    assert backbone and all(torch.equal(got[k], want[k]) for k in backbone)


def test_a_broken_model_folder_is_one_line(shapes, tmp_path):
    data_dir, tiny = shapes
    broken = tmp_path / "broken"
    shutil.copytree(tiny, broken)
    (broken / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(SystemExit, match=r"--model .*broken.*corrupt"):
        run.main(["--model", str(broken), "--data-dir", str(data_dir), "--eval-only", *FAST])


def test_channels_last_trains_the_same_model_and_its_states_resume(shapes, tmp_path):
    """--channels-last changes the memory order only: the losses are the contiguous run's
    to float rounding, and its resume states (safetensors refuse non-contiguous tensors)
    are written and load."""
    data_dir, _ = shapes
    common = [*FAST, "--model", "upernet-resnet-s", "--data-dir", str(data_dir)]
    common += ["--max-steps", "4", "--save-every", "2", "--eval-every", "2", "--log-every", "1"]
    common += ["--batch-size", "4", "--lr", "1e-3", "--export", "last"]
    plain = run.main([*common, "--output-dir", str(tmp_path / "plain")])
    out = tmp_path / "nhwc"
    nhwc = run.main([*common, "--output-dir", str(out), "--channels-last"])

    def losses(result):
        return [row["loss"] for row in result["history"]["train"]]

    assert len(losses(nhwc)) == 4
    # the same first forward pass; later steps drift apart by rounding (BatchNorm, batch 4)
    assert losses(nhwc)[0] == pytest.approx(losses(plain)[0], rel=1e-5)
    assert losses(nhwc) == pytest.approx(losses(plain), rel=1e-2)
    assert losses(nhwc) != losses(plain)  # the other kernels did run
    # the step-4 state holds the weights the run exported (--export last), contiguous
    assert outputs.latest_state(out).name == "step-4"
    state = load_file(outputs.latest_state(out) / "model.safetensors")
    exported = load_checkpoint(out)[0].state_dict()
    assert all(torch.equal(state[k], exported[k]) for k in state)
    # resuming from it: the run is complete, so it loads the state and stops at step 4
    again = run.main([*common, "--output-dir", str(out), "--channels-last"])
    assert again["step"] == 4
