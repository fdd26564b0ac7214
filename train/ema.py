"""Weight EMA (``--ema-decay``): an exponential moving average of the weights, evaluated and
exported in place of the raw weights.

The average is :class:`torch.optim.swa_utils.AveragedModel` (torch's own, as used by
``torchvision``'s reference scripts), updated once per optimizer step, buffers included (so
BatchNorm's running statistics are averaged with the weights they belong to). The decay warms
up as in timm / TensorFlow's ``ExponentialMovingAverage(num_updates=...)``:
``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so a short run is not dominated by
its random initialisation. Integer buffers (BatchNorm's ``num_batches_tracked``) are copied.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel


def warmed_up_decay(decay: float, updates: int) -> float:
    """The decay used for update number ``updates + 1`` (``updates`` done so far, >= 1)."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


def check_decay(decay: float) -> None:
    """The one bound on ``--ema-decay``: ``ValueError`` (one line) unless 0 < decay < 1."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"--ema-decay must be between 0 and 1 (exclusive), got {decay}")


def make_ema(model: torch.nn.Module, decay: float) -> AveragedModel:
    """An EMA copy of ``model`` (unwrapped; same device and dtype, fp32 in training);
    ``decay`` in (0, 1).

    Call ``ema.update_parameters(model)`` after each optimizer step; ``ema.module`` is the
    averaged model (evaluate it, export it). It is an ``nn.Module``: register it with
    ``accelerator.register_for_checkpointing`` so resume states carry it.
    """
    check_decay(decay)

    @torch.no_grad()
    def lerp_all(averaged: list[torch.Tensor], current: list[torch.Tensor], updates) -> None:
        # AveragedModel groups tensors by dtype; `updates` counts the updates already made
        if not averaged[0].is_floating_point():
            torch._foreach_copy_(averaged, current)
            return
        weight = 1.0 - warmed_up_decay(decay, int(updates))
        torch._foreach_lerp_(averaged, current, weight)

    ema = AveragedModel(model, multi_avg_fn=lerp_all, use_buffers=True)
    ema.requires_grad_(False)
    return ema
