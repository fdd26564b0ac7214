"""Per-pixel winner and area counts of upsampled, score-weighted masks, in bounded memory.

transformers' ``compute_segments`` (Mask2Former, MaskFormer and OneFormer panoptic, and
OneFormer instance) does, for ``K`` kept queries and an ``H x W`` output::

    probs = F.interpolate(masks[None], size=(H, W), mode="bilinear",
                          align_corners=False, antialias=...)[0]   # K x H x W
    probs *= scores[:, None, None]
    winner = probs.argmax(0)                                       # H x W
    original_area[k] = (probs[k] >= mask_threshold).sum()

which holds ``K x H x W`` floats: 4.8 GB for 100 queries at 12 MP. :func:`upsampled_winners`
returns the identical ``winner`` map and ``original_area`` counts without that tensor:

1. **Windows.** Every output pixel mixes the 2x2 source window at its first source row
   and column (both kernels used here have two taps per axis when upsampling). Output
   pixels sharing a window form a block; source rows are processed in bands whose
   temporaries fit ``budget_bytes`` (a band is at least one source row: ``K x w x 8``
   bytes, 0.3 MB for 100 queries 384 wide).
2. **Pruning.** In each window a reference query ``r`` (the top-left corner's winner)
   is compared with every query ``k``: ``k`` can only win a pixel of the window if its
   weighted corner values exceed ``r``'s at some corner (bilinear interpolation of the
   difference is a convex combination of the corner differences), less a rounding
   tolerance. Windows with one candidate take it without arithmetic; the threshold
   count of a window whose corners all lie on one side of ``mask_threshold`` is its
   pixel count or zero. (On a random Mask2Former-Swin-T, 100 queries, 1.25 candidates
   per window remain; comparing window extremes instead of differences leaves 23.)
3. **Exact evaluation** of the remaining (window, query) blocks with PyTorch's own
   weights (read from one-hot interpolations) and operation order (``fma`` where its
   CPU kernel fuses), checked bit for bit against ``F.interpolate`` on a probe for each
   geometry before it is trusted (:mod:`segdemo.upsample` does the same; the check
   interpolates a 2-map probe at full size, once per geometry and process).
4. **Fallback** (non-CPU tensors, NaN/inf, antialiased downsampling with more than two
   taps, or a geometry where the check fails: on PyTorch 2.13 CPU, outputs under about
   10k pixels): ``F.interpolate`` itself, in one call when it fits the budget (PyTorch's
   small-output kernel rounds differently with other channel counts), else a few whole
   maps at a time with a running argmax; those blocks hold at least one ``H x W`` map.

Ties go to the lower query index, as ``argmax`` does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from segdemo import upsample

BUDGET_BYTES = upsample.BUDGET_BYTES
"""Default memory for the temporaries of one band or block (the outputs are not counted)."""

_EPS = float(torch.finfo(torch.float32).eps)
_TINY = 2.0**-140  # absolute slack: a few ulps of a float32 denormal

block_hook: Callable[[str, int], None] | None = None
"""Test instrumentation: called with ``(path, bytes)`` for every band or block, where bytes
is the size of the temporaries it allocated."""


def upsampled_winners(
    planes: torch.Tensor,
    plane_of: torch.Tensor,
    scores: torch.Tensor,
    size: tuple[int, int],
    mask_threshold: float,
    *,
    antialias: bool = False,
    budget_bytes: int = BUDGET_BYTES,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``argmax``, areas and threshold counts of ``interpolate(planes[plane_of]) * scores``.

    Args:
        planes: ``U x h x w`` float32 source maps (mask probabilities or logits).
        plane_of: ``K`` int64, the plane of each query (queries may share a plane); ``K >= 1``.
        scores: ``K`` float32 weights, ``>= 0``.
        size: ``(H, W)`` output size.
        mask_threshold: a pixel of query ``k`` counts in ``original_area[k]`` when its
            weighted upsampled value is ``>= mask_threshold``.
        antialias: ``F.interpolate``'s ``antialias`` (OneFormer: torchvision's resize).
        budget_bytes: memory for the temporaries of one band or block.

    Returns:
        ``(winner, area, original_area)`` on the CPU: ``H x W`` int32 query index in
        ``0..K-1`` (the first maximum); ``K`` int64 pixels each query wins; ``K`` int64
        pixels where each query's value is ``>= mask_threshold``.
    """
    planes = planes.detach().float().contiguous()
    plane_of = plane_of.to(device=planes.device, dtype=torch.int64)
    scores = scores.detach().to(device=planes.device, dtype=torch.float32)
    size = (int(size[0]), int(size[1]))
    fast = planes.device.type == "cpu" and bool(torch.isfinite(planes).all())
    taps = _taps(planes.shape, plane_of.numel(), size, antialias) if fast else None
    if taps is None:
        return _dense(planes, plane_of, scores, size, mask_threshold, antialias, budget_bytes)
    return _windows(planes, plane_of, scores, size, mask_threshold, taps, budget_bytes)


# --------------------------------------------------------------------------- taps


@dataclass(frozen=True)
class _Axis:
    """Per output index along one axis: ``value = v[first] * w0 + v[first + 1] * w1``."""

    first: torch.Tensor  # (out,) int64: the source index of the window
    w0: torch.Tensor  # (out,) float32
    w1: torch.Tensor  # (out,) float32 (0 where one source contributes)
    start: torch.Tensor  # (in,) int64: first output index of each source index's block
    count: torch.Tensor  # (in,) int64: output indices in that block


@dataclass(frozen=True)
class _Taps:
    rows: _Axis
    cols: _Axis
    antialias: bool


def _axis(in_size: int, out_size: int, antialias: bool) -> _Axis | None:
    """PyTorch's 1-D weights, read by interpolating one-hot rows (exact: ``1 * w + 0``)."""
    eye = torch.eye(in_size).reshape(1, in_size, 1, in_size)
    matrix = F.interpolate(
        eye, size=(1, out_size), mode="bilinear", align_corners=False, antialias=antialias
    )[0, :, 0, :].T  # (out, in)
    nonzero = matrix != 0
    count = nonzero.sum(dim=1)
    first = nonzero.to(torch.uint8).argmax(dim=1)
    last = in_size - 1 - nonzero.flip(1).to(torch.uint8).argmax(dim=1)
    if int(count.min()) < 1 or int((last - first).max()) > 1:
        return None  # more than two taps (antialiased downsampling): not this kernel
    index = torch.arange(out_size)
    w0 = matrix[index, first]
    w1 = torch.where(last > first, matrix[index, last], torch.zeros(()))
    # the pruning bounds assume each output is a convex combination, up to rounding
    if float((w0.double() + w1.double() - 1).abs().max()) > 4 * _EPS or bool((w0 < 0).any()):
        return None
    start, runs = upsample._blocks(first, in_size)
    return _Axis(first, w0, w1, start, runs)


_verified: dict[tuple, bool] = {}
_verified_lock = threading.Lock()


def _taps(shape: torch.Size, queries: int, size: tuple[int, int], antialias: bool) -> _Taps | None:
    """The geometry's taps, or ``None`` where the emulation is not PyTorch's kernel (cached)."""
    _, low_h, low_w = shape
    if not antialias and not upsample._emulation_matches((queries, low_h, low_w), size):
        return None
    rows, cols = _axis(low_h, size[0], antialias), _axis(low_w, size[1], antialias)
    if rows is None or cols is None:
        return None
    taps = _Taps(rows, cols, antialias)
    if antialias:
        key = (low_h, low_w, size, torch.get_num_threads(), torch.__version__)
        with _verified_lock:
            if key not in _verified:
                _verified[key] = _check_antialias(taps, low_h, low_w, size)
            if not _verified[key]:
                return None
    return taps


def _check_antialias(taps: _Taps, low_h: int, low_w: int, size: tuple[int, int]) -> bool:
    """Whether the emulation equals ``F.interpolate(antialias=True)`` on a random probe."""
    height, width = size
    probe = torch.randn(2, low_h, low_w, generator=torch.Generator().manual_seed(0))
    reference = F.interpolate(
        probe[None], size=size, mode="bilinear", align_corners=False, antialias=True
    )[0]
    # every row and column at least once, plus random pixels
    ys = torch.cat([torch.arange(height), torch.arange(width) % height])
    xs = torch.cat([torch.arange(height) % width, torch.arange(width)])
    sample = torch.Generator().manual_seed(1)
    ys = torch.cat([ys, torch.randint(0, height, (20_000,), generator=sample)])
    xs = torch.cat([xs, torch.randint(0, width, (20_000,), generator=sample)])
    for channel in range(2):
        mine = _pixel_values(probe[channel], ys, xs, taps)
        if not torch.equal(mine, reference[channel, ys, xs]):
            return False
    return True


def _pixel_values(
    plane: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, taps: _Taps
) -> torch.Tensor:
    """The emulated interpolation of one ``h x w`` plane at output pixels ``(ys, xs)``."""
    low_h, low_w = plane.shape
    rows, cols = taps.rows, taps.cols
    i0, j0 = rows.first[ys], cols.first[xs]
    i1, j1 = (i0 + 1).clamp(max=low_h - 1), (j0 + 1).clamp(max=low_w - 1)
    return _combine(
        plane[i0, j0],
        plane[i0, j1],
        plane[i1, j0],
        plane[i1, j1],
        cols.w0[xs],
        cols.w1[xs],
        rows.w0[ys],
        rows.w1[ys],
        taps.antialias,
    )


def _combine(v00, v01, v10, v11, wx0, wx1, wy0, wy1, antialias: bool) -> torch.Tensor:
    """PyTorch's CPU arithmetic for one 2x2 window: width pass, then height pass.

    The generic bilinear kernel computes ``fma(v0, w0, v1 * w1)`` per axis; the separable
    antialias kernel accumulates ``v0 * w0``, then ``fma(v1, w1, acc)``.
    """
    if antialias:
        top = _fma(v01, wx1, v00 * wx0)
        bottom = _fma(v11, wx1, v10 * wx0)
        return _fma(bottom, wy1, top * wy0)
    top = _fma(v00, wx0, v01 * wx1)
    bottom = _fma(v10, wx0, v11 * wx1)
    return _fma(top, wy0, bottom * wy1)


_fma = upsample._fma


# --------------------------------------------------------------------------- windows


def _windows(
    planes: torch.Tensor,
    plane_of: torch.Tensor,
    scores: torch.Tensor,
    size: tuple[int, int],
    threshold: float,
    taps: _Taps,
    budget: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Band by band over source rows: prune per window, evaluate the undecided blocks."""
    _, low_h, low_w = planes.shape
    queries = plane_of.numel()
    height, width = size
    winner = torch.empty((height, width), dtype=torch.int32)
    area = torch.zeros(queries, dtype=torch.int64)
    original = torch.zeros(queries, dtype=torch.int64)
    # probabilities (weighted by scores >= 0) are >= 0: with a threshold <= 0 every pixel
    # counts, no window needs a look
    nonneg = float(planes.min()) >= 0
    count_all = threshold <= 0 and nonneg
    if count_all:
        original += height * width
    # per band: the weighted corners (4 bytes) and candidate flags (1) per (query, window),
    # plus a few window-sized temporaries; rows capped to keep a query's slice in cache
    band_rows = max(1, min(64, budget // (queries * (low_w + 1) * 8)))
    for top in range(0, low_h, band_rows):
        bottom = min(low_h, top + band_rows)
        _band(
            planes, plane_of, scores, top, bottom, threshold, count_all, nonneg, taps, winner,
            area, original, budget,
        )  # fmt: skip
    return winner, area, original


def _band(
    planes, plane_of, scores, top, bottom, threshold, count_all, nonneg, taps, winner, area,
    original, budget,
) -> None:  # fmt: skip
    """Window rows ``top..bottom-1``: fill their output rows of ``winner``; add their pixels
    to ``area`` (per winner) and ``original`` (per query, at or above ``threshold``).

    Loops over queries on ``n x w`` slices (cache-sized) rather than reducing ``K x n x w``
    tensors over their first dimension, which PyTorch's CPU kernels do several times slower.
    """
    low_h = planes.shape[1]
    rows, cols = taps.rows, taps.cols
    n = bottom - top
    # weighted corner values: rows top..bottom (one more for the windows' second row)
    slab = planes[:, top : min(bottom + 1, low_h)]
    if not _is_identity(plane_of, planes.shape[0]):
        slab = slab[plane_of]
    weighted = slab * scores[:, None, None]
    padded = F.pad(weighted[None], (0, 1, 0, 1), mode="replicate")[0]  # (K, n + 1 or 2, w + 1)
    del weighted
    queries, width = padded.shape[0], padded.shape[2] - 1

    views = _all_corners(padded, n)

    # 1. a reference per window: the first query with the largest top-left corner (any
    #    query would do; a likely winner prunes best)
    best, reference = padded[0, :n, :-1].clone(), torch.zeros((n, width), dtype=torch.int64)
    for k in range(1, queries):
        value = padded[k, :n, :-1]
        reference.masked_fill_(value > best, k)
        torch.maximum(best, value, out=best)
    ref = [torch.gather(view, 0, reference[None])[0] for view in views]
    ref_slack = _slack(*ref, nonneg=nonneg)
    # 2. per query: can it beat the reference somewhere in the window? (bilinear values of
    #    the difference lie between its corner values, up to rounding: the slack)
    pixels = rows.count[top:bottom, None] * cols.count[None, :]  # (n, w)
    has_pixels = pixels > 0
    candidate = torch.empty((queries, n, width), dtype=torch.bool)
    count = torch.zeros((n, width), dtype=torch.int32)
    straddling = []
    for k in range(queries):
        c = [view[k] for view in views]
        exceed = c[0] - ref[0]
        for i in (1, 2, 3):
            torch.maximum(exceed, c[i] - ref[i], out=exceed)
        high = torch.maximum(torch.maximum(c[0], c[1]), torch.maximum(c[2], c[3]))
        low = None if nonneg and count_all else torch.minimum(
            torch.minimum(c[0], c[1]), torch.minimum(c[2], c[3])
        )  # fmt: skip
        slack = (high if nonneg else torch.maximum(high, -low)).mul(64 * _EPS).add_(_TINY)
        torch.ge(exceed.add_(slack).add_(ref_slack), 0, out=candidate[k])
        count += candidate[k]
        if not count_all:
            sure = low - slack >= threshold  # every pixel of the window counts
            original[k] += int((pixels * sure).sum())
            maybe = torch.nonzero(~sure & (high + slack >= threshold) & has_pixels)
            if maybe.numel():
                straddling.append(torch.cat([torch.full((len(maybe), 1), k), maybe], dim=1))
    _account("windows", padded, candidate, count, pixels, exceed, exceed, exceed, exceed, exceed)
    del padded, views
    y0, y1 = int(rows.start[top]), int(rows.start[bottom - 1] + rows.count[bottom - 1])
    if y1 > y0:
        fill = reference.to(torch.int32).index_select(0, rows.first[y0:y1] - top)
        winner[y0:y1] = fill.index_select(1, cols.first)
        _account("fill", fill, winner[y0:y1])
        del fill
    multi = torch.nonzero((count > 1) & has_pixels)
    if multi.numel():
        _decide(planes, plane_of, scores, candidate, count, multi, top, taps, winner, budget)
    del candidate
    if y1 > y0:
        area += torch.bincount(winner[y0:y1].flatten(), minlength=area.numel())
    if straddling:
        pairs = torch.cat(straddling)  # (m, 3): query, window row, window column
        _count(planes, plane_of, scores, pairs, top, threshold, taps, original, budget)


def _all_corners(padded: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """The four ``(K, n, w)`` corner views of each window of a padded band."""
    return (
        padded[:, :n, :-1],
        padded[:, :n, 1:],
        padded[:, 1 : n + 1, :-1],
        padded[:, 1 : n + 1, 1:],
    )


def _slack(*corners: torch.Tensor, nonneg: bool) -> torch.Tensor:
    """Rounding margin of a window: 64 ulps of its largest corner magnitude, plus denormals.

    Covers the emulation's three roundings, the weights summing to 1 within 2 ulps and the
    rounding of the weighted corners and of their differences (together under 20 ulps).
    """
    magnitude = corners[0] if nonneg else corners[0].abs()
    for corner in corners[1:]:
        magnitude = torch.maximum(magnitude, corner if nonneg else corner.abs())
    return magnitude.mul(64 * _EPS).add_(_TINY)


def _is_identity(plane_of: torch.Tensor, planes: int) -> bool:
    """Whether query ``k`` uses plane ``k`` for every ``k`` (no gather needed)."""
    return plane_of.numel() == planes and bool(
        torch.equal(plane_of, torch.arange(planes, device=plane_of.device))
    )


def _decide(planes, plane_of, scores, candidate, count, multi, top, taps, winner, budget) -> None:
    """Evaluate the windows with several candidates, grouped by candidate count."""
    rows, cols = taps.rows, taps.cols
    block = int(rows.count.max()) * int(cols.count.max())
    k_of = count[multi[:, 0], multi[:, 1]]
    for k in torch.unique(k_of).tolist():
        windows = multi[k_of == k]
        # ~40 bytes per (window, candidate, pixel): float64 temporaries of the fma
        step = max(1, budget // (k * block * 40))
        for part in torch.split(windows, step):
            wi, wj = part[:, 0], part[:, 1]
            # candidate queries of each window, ascending (nonzero is row-major)
            queries = torch.nonzero(candidate[:, wi, wj].T)[:, 1].view(-1, k)
            values, ys, xs, valid = _block_values(
                planes, plane_of, scores, queries, wi + top, wj, taps
            )
            best = _first_max(values, queries)
            # values: float32 plus the float64 product and float32 addend inside the fma
            _account("decide", values, values, values, best, valid)
            del values
            target = (ys[:, :, None] * winner.shape[1] + xs[:, None, :])[valid]
            winner.view(-1)[target] = best[valid].to(torch.int32)


def _first_max(values: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """``queries[argmax over dim 1]`` of ``values (n, k, R, C)``: the first (lowest) on ties."""
    best_value, best = values[:, 0], queries[:, :1, None].expand(-1, *values.shape[2:])
    best = best.clone()  # (n, R, C)
    for c in range(1, values.shape[1]):
        better = values[:, c] > best_value
        best_value = torch.where(better, values[:, c], best_value)
        best = torch.where(better, queries[:, c, None, None], best)
    return best


def _count(planes, plane_of, scores, pairs, top, threshold, taps, original, budget) -> None:
    """Add the pixels ``>= threshold`` of the (query, window) blocks that straddle it."""
    rows, cols = taps.rows, taps.cols
    block = int(rows.count.max()) * int(cols.count.max())
    step = max(1, budget // (block * 40))
    for part in torch.split(pairs, step):
        queries = part[:, :1]
        values, _, _, valid = _block_values(
            planes, plane_of, scores, queries, part[:, 1] + top, part[:, 2], taps
        )
        hits = ((values[:, 0] >= threshold) & valid).flatten(1).sum(dim=1)
        _account("count", values, values, values, valid)
        original.index_add_(0, queries[:, 0], hits)


def _block_values(planes, plane_of, scores, queries, wi, wj, taps):
    """Weighted upsampled values of each window's queries over the window's pixel block.

    Args:
        queries: ``(n, k)`` query indices; ``wi``, ``wj``: ``(n,)`` window row and column.

    Returns:
        ``values (n, k, R, C)`` float32, output rows ``ys (n, R)`` and columns ``xs (n, C)``
        (clamped), and ``valid (n, R, C)``: which block positions are pixels of the window.
    """
    _, low_h, low_w = planes.shape
    rows, cols = taps.rows, taps.cols
    block_r, block_c = int(rows.count.max()), int(cols.count.max())
    r_off, c_off = torch.arange(block_r), torch.arange(block_c)
    ys = (rows.start[wi][:, None] + r_off).clamp(max=rows.first.numel() - 1)  # (n, R)
    xs = (cols.start[wj][:, None] + c_off).clamp(max=cols.first.numel() - 1)  # (n, C)
    i1, j1 = (wi + 1).clamp(max=low_h - 1), (wj + 1).clamp(max=low_w - 1)
    flat = planes.view(-1)
    base = plane_of[queries] * (low_h * low_w)  # (n, k)
    v00, v01, v10, v11 = (
        flat[base + (y * low_w + x)[:, None]][:, :, None, None]
        for y, x in ((wi, wj), (wi, j1), (i1, wj), (i1, j1))
    )  # (n, k, 1, 1)
    wx0, wx1 = cols.w0[xs][:, None, None, :], cols.w1[xs][:, None, None, :]  # (n, 1, 1, C)
    wy0, wy1 = rows.w0[ys][:, None, :, None], rows.w1[ys][:, None, :, None]  # (n, 1, R, 1)
    values = _combine(v00, v01, v10, v11, wx0, wx1, wy0, wy1, taps.antialias)  # (n, k, R, C)
    values *= scores[queries][:, :, None, None]
    valid = (r_off[None, :, None] < rows.count[wi][:, None, None]) & (
        c_off[None, None, :] < cols.count[wj][:, None, None]
    )
    return values, ys, xs, valid


# --------------------------------------------------------------------------- fallback


def _dense(planes, plane_of, scores, size, threshold, antialias, budget):
    """``F.interpolate`` on whole maps: in one call if it fits, else a few maps at a time."""
    queries = plane_of.numel()
    height, width = size
    map_bytes = height * width * 4
    # block, the >= mask and argmax's int64 indices: ~14 bytes per pixel and map
    chunk = max(1, min(queries, budget // (map_bytes * 14 // 4)))
    indices = torch.arange(queries, device=planes.device)
    groups = [indices] if chunk >= queries else upsample._groups(indices, chunk, queries)
    original = torch.zeros(queries, dtype=torch.int64, device=planes.device)
    area = torch.zeros(queries, dtype=torch.int64, device=planes.device)
    best_value = best_index = None
    for group in groups:
        block = F.interpolate(
            planes[plane_of[group]][None],
            size=size,
            mode="bilinear",
            align_corners=False,
            antialias=antialias,
        )[0]
        block *= scores[group].view(-1, 1, 1)
        original[group] = (block >= threshold).flatten(1).sum(dim=1)
        index = block.argmax(dim=0)
        value = torch.gather(block, 0, index[None])[0]
        _account("dense", block, index)
        del block
        index = group[index].to(torch.int32)
        if best_value is None:
            best_value, best_index = value, index
            continue
        # strictly greater (or a first NaN, which argmax ranks highest): earlier maps keep ties
        better = (value > best_value) | (value.isnan() & ~best_value.isnan())
        best_value = torch.where(better, value, best_value)
        best_index = torch.where(better, index, best_index)
    area += torch.bincount(best_index.flatten(), minlength=queries)
    return best_index.cpu(), area.cpu(), original.cpu()


def _account(path: str, *tensors: torch.Tensor) -> None:
    if block_hook is not None:
        block_hook(path, sum(t.numel() * t.element_size() for t in tensors))
