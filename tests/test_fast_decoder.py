"""segdemo.fast_decoder against transformers' own SegformerDecodeHead.

The re-associated head must compute the same logits, loss and gradients as the stock
forward of the same module (up to float rounding), leave eval mode untouched, and not
tie a copied model to the original's parameters.
"""

from __future__ import annotations

import copy

import pytest
import torch
from builders import tiny_segformer_config
from transformers import SegformerForSemanticSegmentation

from segdemo import fast_decoder, presets
from segdemo.fast_decoder import use_fast_decoder

ID2LABEL = {i: f"class{i}" for i in range(5)}


def tiny_segformer() -> SegformerForSemanticSegmentation:
    config = tiny_segformer_config(
        ID2LABEL,
        classifier_dropout_prob=0.0,  # dropout draws differ between two forwards
        drop_path_rate=0.0,
    )
    torch.manual_seed(0)
    model = SegformerForSemanticSegmentation(config)
    # random BN statistics and biases, so that a dropped term would show
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
            if getattr(module, "bias", None) is not None:
                module.bias.normal_(0, 0.1)
    return model


def loss_and_grads(model, pixels, labels):
    model.zero_grad()
    out = model(pixel_values=pixels, labels=labels)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), out.loss.detach(), grads


# odd sizes: stage grids of 18x23 / 9x12 / 5x6 / 3x3, so every upsample is a real resize
@pytest.mark.parametrize("size", [(70, 90), (64, 64)])
def test_training_forward_and_gradients_match_the_stock_head(size, monkeypatch):
    calls = []
    fused = fast_decoder.fused_decode
    monkeypatch.setattr(
        fast_decoder, "fused_decode", lambda *a, **k: calls.append(1) or fused(*a, **k)
    )
    stock = tiny_segformer()
    fast = copy.deepcopy(stock)
    assert use_fast_decoder(fast)
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(2, 3, *size, generator=generator)
    labels = torch.randint(0, len(ID2LABEL), (2, *size), generator=generator)
    labels[:, :5] = 255  # ignored rows
    stock.train()
    fast.train()
    want_logits, want_loss, want_grads = loss_and_grads(stock, pixels, labels)
    got_logits, got_loss, got_grads = loss_and_grads(fast, pixels, labels)

    torch.testing.assert_close(got_logits, want_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
    assert got_grads.keys() == want_grads.keys()
    assert any(n.startswith("decode_head.linear_fuse") for n in got_grads)
    for name, want in want_grads.items():
        torch.testing.assert_close(got_grads[name], want, rtol=1e-3, atol=1e-5, msg=name)
    assert calls == [1]  # the fast model ran the re-associated head, once


def test_real_size_b0_preset_matches_in_training_mode():
    """The preset train/run.py uses (SegFormer-B0 widths, 256-channel decoder), with its
    dropout and stochastic depth on: both forwards draw the same masks from one seed."""
    model, _ = presets.build_preset("segformer-b0", ID2LABEL, (96, 128))
    assert model.decode_head.dropout.p > 0
    fast = copy.deepcopy(model)
    assert use_fast_decoder(fast)
    pixels = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(2))
    model.train()
    fast.train()
    with torch.no_grad():
        torch.manual_seed(7)
        want = model(pixel_values=pixels).logits
        torch.manual_seed(7)
        got = fast(pixel_values=pixels).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_eval_mode_is_the_stock_forward_bit_for_bit():
    stock = tiny_segformer()
    fast = copy.deepcopy(stock)
    use_fast_decoder(fast)
    pixels = torch.randn(1, 3, 70, 90, generator=torch.Generator().manual_seed(3))
    stock.eval()
    fast.eval()
    with torch.no_grad():
        assert torch.equal(fast(pixel_values=pixels).logits, stock(pixel_values=pixels).logits)


def test_a_copy_of_a_patched_model_uses_its_own_parameters():
    fast = tiny_segformer()
    use_fast_decoder(fast)
    twin = copy.deepcopy(fast)
    with torch.no_grad():
        twin.decode_head.classifier.bias.add_(10.0)
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    for mode in ("train", "eval"):
        getattr(fast, mode)()
        getattr(twin, mode)()
        with torch.no_grad():
            delta = twin(pixel_values=pixels).logits - fast(pixel_values=pixels).logits
        torch.testing.assert_close(delta, torch.full_like(delta, 10.0), msg=mode)


def test_other_models_are_left_alone():
    model, _ = presets.build_preset("upernet-resnet-s", ID2LABEL, (64, 64))
    forward = model.decode_head.forward
    assert use_fast_decoder(model) is False
    assert model.decode_head.forward == forward
