"""``--channels-last``: train with convolution weights and inputs in NHWC memory order.

oneDNN (CPU) and cuDNN (GPU) run convolutions faster on channels-last tensors. Measured
here, UperNet-ResNet-S, batch 8 at 192x256, bf16 autocast, one CPU thread: 1.17x per step
(``python bench/bench_channels_last.py``); Mask2Former-ResNet-S does not gain (0.97x). Only the
memory order changes, not the model: the first forward pass agrees with the contiguous
model to float rounding, and checkpoints and resume states are written contiguous as
usual (transformers' ``save_pretrained`` and accelerate's ``save_state`` pack tensors
before safetensors writes them; tests/test_train.py checks both).
"""

from __future__ import annotations

import torch


def use_channels_last(model: torch.nn.Module) -> None:
    """Put ``model``'s 4-D weights in channels-last order (in place, before
    ``accelerator.prepare``: the optimizer and DDP see the same parameters)."""
    model.to(memory_format=torch.channels_last)


def channels_last_batch(batch: dict) -> dict:
    """``batch`` with its ``pixel_values`` (B, 3, H, W float) in channels-last order."""
    pixels = batch["pixel_values"].contiguous(memory_format=torch.channels_last)
    return {**batch, "pixel_values": pixels}
