"""Weight EMA (``--ema-decay``, train/ema.py): the average torch's AveragedModel keeps, what
training evaluates and exports, and what resume states carry."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file
from test_train import FAST, one_thread, shapes  # noqa: F401  (module fixtures)
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from segdemo.checkpoint import load_checkpoint
from train import run
from train.ema import make_ema, warmed_up_decay


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """New weights and BatchNorm statistics, as a training step would leave them."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=generator))
            else:
                tensor.add_(1)  # num_batches_tracked


def test_ema_is_torch_ema_with_the_warm_up_decay():
    """Each update is torch's own EMA step (get_ema_multi_avg_fn) at the warmed-up decay;
    float buffers are averaged, integer ones follow the model."""
    model = _net()
    ours = make_ema(model, decay=0.9)
    reference = [p.detach().clone() for p in [*model.parameters(), *model.buffers()]]
    ours.update_parameters(model)  # the first update copies
    for updates in range(1, 30):
        _perturb(model, seed=updates)
        decay = warmed_up_decay(0.9, updates)
        torch_step = AveragedModel(_net(), multi_avg_fn=get_ema_multi_avg_fn(decay))
        current = [p.detach() for p in [*model.parameters(), *model.buffers()]]
        floats = [(r, c) for r, c in zip(reference, current, strict=True) if r.is_floating_point()]
        torch_step.multi_avg_fn([r for r, _ in floats], [c for _, c in floats], None)
        for r, c in zip(reference, current, strict=True):
            if not r.is_floating_point():
                r.copy_(c)
        ours.update_parameters(model)
        averaged = [*ours.module.parameters(), *ours.module.buffers()]
        for got, want in zip(averaged, reference, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert warmed_up_decay(0.9, 1) == pytest.approx(2 / 11)  # early updates move fast
    assert warmed_up_decay(0.9, 1000) == 0.9
    assert not any(p.requires_grad for p in ours.parameters())


def test_training_exports_the_average_and_resumes_it(shapes, tmp_path, capsys):  # noqa: F811
    """OUTPUT holds the EMA weights (not the last step's), and a run resumed from an epoch
    boundary exports the same average as the uninterrupted run."""
    data_dir, tiny = shapes
    args = [*FAST, "--model", str(tiny), "--data-dir", str(data_dir), "--max-steps", "9"]
    args += ["--save-every", "3", "--save-total-limit", "10", "--eval-every", "100"]
    args += ["--batch-size", "4", "--lr", "3e-3", "--ema-decay", "0.5", "--export", "last"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run.main([*args, "--output-dir", str(whole)])

    exported, _ = load_checkpoint(whole)  # in-memory names (transformers renames on save)
    exported = exported.state_dict()
    raw = load_file(whole / "state" / "step-9" / "model.safetensors")
    saved_average = torch.load(
        whole / "state" / "step-9" / "custom_checkpoint_1.pkl", weights_only=True
    )
    assert int(saved_average["n_averaged"]) == 9
    assert {f"module.{key}" for key in exported} | {"n_averaged"} == set(saved_average)
    moved = 0
    for key, value in exported.items():
        average = saved_average[f"module.{key}"]
        torch.testing.assert_close(value, average, rtol=0, atol=0, msg=key)
        moved += not torch.equal(average, raw[key])
    assert moved > len(exported) // 2  # the average is not the last step's weights

    shutil.copytree(whole / "state" / "step-3", cut / "state" / "step-3")
    capsys.readouterr()
    run.main([*args, "--output-dir", str(cut)])
    assert "at step 3" in capsys.readouterr().out
    resumed = load_checkpoint(cut)[0].state_dict()
    for key, value in exported.items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_ema_decay_is_checked_before_any_work(capsys):
    with pytest.raises(SystemExit):
        run.main(["--data-dir", "nowhere", "--ema-decay", "1.0"])
    assert "--ema-decay must be between 0 and 1" in capsys.readouterr().err
