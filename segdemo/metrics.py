"""Semantic segmentation metrics with exactly the semantics of 🤗 evaluate's ``mean_iou``.

One streaming :class:`ConfusionMatrix` is shared by training, ``python -m segdemo
evaluate`` and the tests, so the numbers agree everywhere.

Semantics (those of evaluate's ``mean_iou``, derived from its per-image
``np.histogram(x, bins=num_labels, range=(0, num_labels - 1))``; integer values
``0..num_labels-1`` land in their own bin and every other value in none):

* reference pixels equal to ``ignore_index`` are dropped, together with their
  prediction;
* ``area_intersect[c]`` counts pixels with prediction == reference == ``c``;
* ``area_label[c]`` counts reference pixels of class ``c`` whatever their
  prediction, *including* predictions outside ``0..num_labels-1``;
* ``area_pred[c]`` counts predictions of class ``c`` whatever their reference,
  *including* references outside ``0..num_labels-1`` that are not ``ignore_index``;
* totals are summed over the whole dataset, then
  ``iou = intersect / (pred + label - intersect)``, ``accuracy = intersect / label``,
  ``overall_accuracy = sum(intersect) / sum(label)``; a class absent from both
  prediction and reference gives NaN and is left out of the means (``nanmean``).

Because an out-of-range value belongs to no class, the counts are kept in an
``(N+1) x (N+1)`` matrix whose last row/column is "no class"; :attr:`ConfusionMatrix.matrix`
is its ``N x N`` class part.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from segdemo.errors import SegdemoError
from segdemo.labels import IGNORE_INDEX

__all__ = ["ConfusionMatrix", "MetricInputError"]

# Maps whose values all lie in 0..255 are counted as raw (reference, prediction)
# byte pairs: one integer key and one bincount per pixel, with no per-pixel
# masking. Out-of-range and ignored values are folded into place later, on the
# 256 x 256 pair histogram instead of on every pixel.
_BYTE = 256


class MetricInputError(SegdemoError):
    """Predictions or references that cannot be scored; the message says what to fix."""


Array = np.ndarray | torch.Tensor


def _as_integer_array(x: Array, what: str) -> Array:
    """Integer NumPy array (for anything on the CPU) or integer tensor (on an accelerator).

    CPU tensors become NumPy views: NumPy's bincount runs on the calling thread,
    while torch's wakes its thread pool for every map, which stalled for
    milliseconds per map on a loaded machine (docs/benchmarks.md, Metrics).
    """
    if isinstance(x, torch.Tensor):
        if x.device.type != "cpu":
            if x.is_floating_point() or x.is_complex():
                raise MetricInputError(
                    f"{what} must be integer class ids, got dtype {x.dtype}; take the argmax over classes first"
                )
            return x.to(torch.uint8) if x.dtype == torch.bool else x
        x = x.detach().numpy()
    a = np.asarray(x)
    if a.dtype == np.bool_:
        return a.view(np.uint8)
    if a.dtype.kind not in "iu":
        raise MetricInputError(
            f"{what} must be integer class ids, got dtype {a.dtype}; take the argmax over classes first"
        )
    return a


def _in_byte_range(x: Array) -> bool:
    if isinstance(x, np.ndarray):
        if x.dtype == np.uint8 or x.size == 0:
            return True
        # one pass instead of min() and max(): any value outside 0..255 (negatives
        # included, two's complement) sets a bit above the low byte of the OR
        return not (int(np.bitwise_or.reduce(x, axis=None)) & ~(_BYTE - 1))
    if x.dtype == torch.uint8 or x.numel() == 0:
        return True
    lo, hi = torch.aminmax(x)
    return bool(lo >= 0) and bool(hi < _BYTE)


def _byte_pair_histogram(p: Array, r: Array) -> Array:
    """Flat 256*256 ``int64`` histogram of ``r * 256 + p`` for values in ``0..255``."""
    if isinstance(r, np.ndarray):
        if p.itemsize == 1:  # byte maps: a uint16 key is 1/4 of the memory traffic of intp
            key = r.astype(np.uint16)
            key <<= 8
            key |= p.view(np.uint8)  # int8 and bool maps too (values checked to be 0..255)
        else:  # wider predictions: one widening pass, straight into the dtype bincount counts in
            key = r.astype(np.intp)
            key *= _BYTE
            key += p
        return np.bincount(key, minlength=_BYTE * _BYTE)
    key = r.to(torch.int32, copy=True).mul_(_BYTE).add_(p)  # int32 first: uint8 would wrap
    return torch.bincount(key, minlength=_BYTE * _BYTE)


def _general_counts(p: Array, r: Array, n: int, ignore_index: int) -> np.ndarray:
    """``(N+1)x(N+1)`` ``int64`` counts for any integer values (row/col ``N`` = no class)."""
    xp = np if isinstance(r, np.ndarray) else torch
    p = p.astype(np.int64) if xp is np else p.long()
    r = r.astype(np.int64) if xp is np else r.long()
    col = xp.where((p < 0) | (p >= n), n, p)
    row = xp.where((r < 0) | (r >= n), n, r)
    row = xp.where(r == ignore_index, n + 1, row)  # row N+1: dropped below
    hist = xp.bincount(row * (n + 1) + col, minlength=(n + 2) * (n + 1))[: (n + 1) * (n + 1)]
    hist = hist if xp is np else hist.cpu().numpy()
    return hist.reshape(n + 1, n + 1)


class ConfusionMatrix:
    """Streaming confusion matrix; :meth:`compute` gives evaluate's ``mean_iou`` dict.

    Args:
        num_labels: number of classes ``N``; class ids are ``0..N-1``.
        ignore_index: reference value whose pixels are not counted (default
            :data:`~segdemo.labels.IGNORE_INDEX`, 255). Predictions are never ignored.

    Update with pairs of label maps (NumPy arrays or torch tensors on any device,
    any integer dtype, same shape: ``HxW`` or ``NxHxW``). References must already
    be training ids (see :func:`segdemo.labels.to_train_ids`). Merge the matrices
    of several workers by summing their :attr:`counts` (e.g. an all-reduce) and
    :meth:`from_counts`.
    """

    def __init__(self, num_labels: int, ignore_index: int = IGNORE_INDEX) -> None:
        if int(num_labels) < 1:
            raise MetricInputError(f"num_labels must be >= 1, got {num_labels}")
        self.num_labels = int(num_labels)
        self.ignore_index = int(ignore_index)
        n = self.num_labels
        self._counts = np.zeros((n + 1, n + 1), dtype=np.int64)
        # raw byte-pair histograms (flat 256*256 int64) per device, folded lazily
        self._pending: dict[str, Array] = {}

    # -- accumulation -------------------------------------------------------------
    def update(self, pred: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor) -> None:
        """Count one map or a batch of maps.

        Args:
            pred: predicted class ids, any integer dtype; values outside
                ``0..N-1`` count in no class.
            ref: reference training ids of the same shape; ``ignore_index`` pixels
                are dropped; other values outside ``0..N-1`` count in no class.
        """
        p = _as_integer_array(pred, "predictions")
        r = _as_integer_array(ref, "references")
        if tuple(p.shape) != tuple(r.shape):
            raise MetricInputError(
                f"prediction shape {tuple(p.shape)} differs from reference shape {tuple(r.shape)}; "
                "resize the prediction (or its logits) to the reference's resolution first"
            )
        if isinstance(p, np.ndarray) != isinstance(r, np.ndarray):  # one on an accelerator
            device = (r if isinstance(r, torch.Tensor) else p).device
            # torch supports little of uint16/32/64: widen those (out-of-range stays out of range)
            p, r = (
                torch.as_tensor(
                    x.astype(np.int64) if x.dtype.kind == "u" and x.itemsize > 1 else x,
                    device=device,
                )
                if isinstance(x, np.ndarray)
                else x
                for x in (p, r)
            )
        elif isinstance(p, torch.Tensor) and p.device != r.device:
            p = p.to(r.device)
        p = p.reshape(-1)
        r = r.reshape(-1)
        if p.shape[0] == 0:
            return
        if _in_byte_range(p) and _in_byte_range(r):
            hist = _byte_pair_histogram(p, r)
            where = "numpy" if isinstance(hist, np.ndarray) else str(hist.device)
            pending = self._pending.get(where)
            self._pending[where] = hist if pending is None else pending.__iadd__(hist)
        else:
            self._counts += _general_counts(p, r, self.num_labels, self.ignore_index)

    def _fold(self, raw: np.ndarray) -> np.ndarray:
        """256x256 (reference value, prediction value) histogram -> ``(N+1)x(N+1)`` counts."""
        n = self.num_labels
        pairs = raw.reshape(_BYTE, _BYTE).copy()
        if 0 <= self.ignore_index < _BYTE:
            pairs[self.ignore_index] = 0  # ignored references drop their predictions
        k = min(n, _BYTE)  # byte values that are class ids; the rest (if any) are "no class"
        rows = np.zeros((n + 1, _BYTE), dtype=np.int64)
        rows[:k] = pairs[:k]
        rows[n] = pairs[k:].sum(axis=0)
        out = np.zeros((n + 1, n + 1), dtype=np.int64)
        out[:, :k] = rows[:, :k]
        out[:, n] += rows[:, k:].sum(axis=1)
        return out

    def _flush(self) -> None:
        for raw in self._pending.values():
            self._counts += self._fold(raw if isinstance(raw, np.ndarray) else raw.cpu().numpy())
        self._pending.clear()

    # -- results ------------------------------------------------------------------
    @property
    def counts(self) -> np.ndarray:
        """``(N+1)x(N+1)`` ``int64``: rows = reference, cols = prediction; index ``N`` = no class.

        Row ``N`` holds non-ignored references outside ``0..N-1``; column ``N``
        holds predictions outside ``0..N-1``. A copy: sum these across workers.
        """
        self._flush()
        return self._counts.copy()

    @property
    def matrix(self) -> np.ndarray:
        """``NxN`` ``int64`` confusion matrix: rows = reference class, cols = predicted class."""
        n = self.num_labels
        return self.counts[:n, :n]

    @classmethod
    def from_counts(
        cls, counts: np.ndarray | torch.Tensor, ignore_index: int = IGNORE_INDEX
    ) -> ConfusionMatrix:
        """Rebuild from :attr:`counts` (e.g. after summing them across processes)."""
        c = (
            counts.detach().cpu().numpy()
            if isinstance(counts, torch.Tensor)
            else np.asarray(counts)
        )
        if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] < 2:
            raise MetricInputError(
                f"counts must be an (N+1)x(N+1) array as given by ConfusionMatrix.counts, got shape {c.shape}"
            )
        cm = cls(c.shape[0] - 1, ignore_index)
        cm._counts += c.astype(np.int64)
        return cm

    def areas(self) -> dict[str, np.ndarray]:
        """Per-class totals as evaluate computes them: ``intersect``, ``union``, ``pred``, ``label``.

        Each is a length-``N`` ``int64`` array.
        """
        n = self.num_labels
        c = self.counts
        intersect = np.diagonal(c)[:n].copy()
        label = c[:n, :].sum(axis=1)  # includes out-of-range predictions
        pred = c[:, :n].sum(axis=0)  # includes out-of-range, non-ignored references
        return {
            "intersect": intersect,
            "union": pred + label - intersect,
            "pred": pred,
            "label": label,
        }

    def compute(self) -> dict:
        """Evaluate's ``mean_iou`` result.

        Returns:
            ``mean_iou``, ``mean_accuracy``, ``overall_accuracy`` (``float``, NaN
            when nothing was counted) and ``per_category_iou``,
            ``per_category_accuracy`` (length-``N`` ``float64`` arrays; NaN for a
            class with a zero denominator).
        """
        a = {k: v.astype(np.float64) for k, v in self.areas().items()}
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", RuntimeWarning
            )  # nanmean of all-NaN -> NaN, as evaluate
            iou = a["intersect"] / a["union"]
            acc = a["intersect"] / a["label"]
            return {
                "mean_iou": float(np.nanmean(iou)),
                "mean_accuracy": float(np.nanmean(acc)),
                "overall_accuracy": float(a["intersect"].sum() / a["label"].sum()),
                "per_category_iou": iou,
                "per_category_accuracy": acc,
            }


def metrics_report(metrics: dict, id2label: dict[int, str]) -> dict:
    """:meth:`ConfusionMatrix.compute`'s result as a JSON-ready report: ``mean_iou``,
    ``mean_accuracy``, ``overall_accuracy`` and the per-category values keyed by class name
    (``"i:name"`` for every class when names repeat, so none is lost); NaN -> ``None``.
    The one report of training's evaluation and ``python -m segdemo evaluate``."""
    names = [id2label[i] for i in range(len(id2label))]
    if len(set(names)) != len(names):  # keep duplicate names apart
        names = [f"{i}:{name}" for i, name in enumerate(names)]

    def clean(value: float) -> float | None:
        value = float(value)
        return None if np.isnan(value) else value

    report = {key: clean(metrics[key]) for key in ("mean_iou", "mean_accuracy", "overall_accuracy")}
    for key in ("per_category_iou", "per_category_accuracy"):
        report[key] = {name: clean(v) for name, v in zip(names, metrics[key], strict=True)}
    return report
