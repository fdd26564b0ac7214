"""``argmax`` of bilinearly upsampled class scores, exact and in bounded memory.

transformers' ``post_process_semantic_segmentation`` computes

    F.interpolate(logits[None], size=(H, W), mode="bilinear", align_corners=False)[0].argmax(0)

which holds ``C x H x W`` floats (7.2 GB for 150 classes at 12 MP) and interpolates every
class at every pixel. :func:`upsample_argmax` returns the identical label map:

1. **Pruning.** An upsampled pixel is a convex combination of a 2x2 window of
   low-resolution pixels, so within that window a class can only win if its maximum
   over the window reaches the largest per-class minimum (less a rounding tolerance).
   Windows with a single such candidate are filled without arithmetic.
2. **Fast path (CPU).** The remaining (pixel, candidate class) pairs are interpolated
   with the same weights and the same operation order as PyTorch's separable CPU
   kernel (width pass, then height pass, each ``fma(v0, w0, v1 * w1)``; weights read
   from PyTorch itself by interpolating one-hot rows). Before it is trusted for a
   geometry, the emulation is checked bit for bit against ``F.interpolate`` on a
   random probe; if PyTorch uses another kernel there, step 3 is used instead.
3. **Fallback.** ``F.interpolate`` on a few candidate classes at a time with a running
   maximum: bilinear interpolation treats class planes independently, so this is
   exact by construction (used on GPU and wherever the emulation check fails).

Ties go to the lower class id, as ``argmax`` does.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
import torch.nn.functional as F

BUDGET_BYTES = 256 * 2**20
"""Largest temporary block (upsampled classes, or pixel/candidate pairs) held at once."""


def upsample_argmax(
    logits: torch.Tensor, size: tuple[int, int], budget_bytes: int = BUDGET_BYTES
) -> np.ndarray:
    """The label map of ``logits`` upsampled bilinearly (``align_corners=False``) to ``size``.

    Args:
        logits: ``C x h x w`` float scores (any device).
        size: ``(H, W)`` output size.
        budget_bytes: memory for temporary blocks.

    Returns:
        ``H x W`` ``int32`` class ids in ``0..C-1``, equal to the full interpolation's argmax.
    """
    logits = logits.detach().float().contiguous()
    size = (int(size[0]), int(size[1]))
    if not torch.isfinite(logits).all():
        # NaN/inf break the pruning bounds: interpolate every class
        return _chunked(
            logits, torch.arange(logits.shape[0], device=logits.device), size, budget_bytes
        )
    window_max, window_min = _windows(logits)
    floor = window_min.max(dim=0).values
    tolerance = 64 * torch.finfo(torch.float32).eps * float(logits.abs().max()) + 1e-30
    candidate = window_max >= floor - tolerance  # C x h x w: can class c win in window (i, j)?
    if logits.device.type == "cpu" and _emulation_matches(logits.shape, size):
        return _sparse(logits, candidate, size, budget_bytes, tolerance)
    classes = torch.nonzero(candidate.flatten(1).any(dim=1)).flatten()
    return _chunked(logits, classes, size, budget_bytes)


def _windows(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class max and min over each 2x2 window ``[i, i+1] x [j, j+1]`` (edges clamped)."""
    padded = F.pad(logits[None], (0, 1, 0, 1), mode="replicate")[0]
    corners = (padded[:, :-1, :-1], padded[:, :-1, 1:], padded[:, 1:, :-1], padded[:, 1:, 1:])
    window_max = torch.maximum(
        torch.maximum(corners[0], corners[1]), torch.maximum(corners[2], corners[3])
    )
    window_min = torch.minimum(
        torch.minimum(corners[0], corners[1]), torch.minimum(corners[2], corners[3])
    )
    return window_max, window_min


# --------------------------------------------------------------------------- fallback


def _chunked(
    logits: torch.Tensor, classes: torch.Tensor, size: tuple[int, int], budget_bytes: int
) -> np.ndarray:
    """Interpolate ``classes`` a few at a time with ``F.interpolate``; running argmax."""
    height, width = size
    if classes.numel() == 1:
        return np.full(size, int(classes[0]), dtype=np.int32)
    chunk = max(1, min(classes.numel(), budget_bytes // (4 * height * width)))
    best_value = best_index = None
    for group in _groups(classes, chunk, logits.shape[0]):
        block = F.interpolate(logits[group][None], size=size, mode="bilinear", align_corners=False)[
            0
        ]
        values, indices = block.max(dim=0)
        del block
        index = group.to(indices.device)[indices].to(torch.int32)
        if best_value is None:
            best_value, best_index = values, index
            continue
        # strictly greater: on ties the earlier (lower) class id keeps the pixel, like argmax
        better = values > best_value
        best_value = torch.where(better, values, best_value)
        best_index = torch.where(better, index, best_index)
    return best_index.cpu().numpy()


def _groups(classes: torch.Tensor, chunk: int, num_classes: int) -> list[torch.Tensor]:
    """Split ``classes`` into chunks that take the same PyTorch kernel as the full tensor.

    With one thread PyTorch interpolates 3-channel inputs with a different kernel (other
    rounding). A 3-class model is interpolated in one piece, like the reference; for
    any other model no chunk may have exactly 3 classes.
    """
    if num_classes == 3:
        return [classes]
    groups = list(torch.split(classes, chunk))
    if torch.get_num_threads() == 1:
        groups = [piece for g in groups for piece in ((g[:2], g[2:]) if g.numel() == 3 else (g,))]
    return groups


# --------------------------------------------------------------------------- fast path


def _sparse(
    logits: torch.Tensor,
    candidate: torch.Tensor,
    size: tuple[int, int],
    budget_bytes: int,
    tolerance: float,
) -> np.ndarray:
    """Emulated interpolation of each window's candidate classes over that window's pixels.

    A window ``(i, j)`` owns the output pixels whose first source row is ``i`` and first
    source column is ``j``: a block of ``R_i x C_j`` pixels sharing the same four corner
    values per class. Windows are grouped by candidate count ``K``; the width pass gives
    each candidate's value at the block's top and bottom source rows per column, and only
    columns where two candidates' top-bottom ranges overlap get the height pass.
    """
    num_classes, low_h, low_w = candidate.shape
    rows, cols = _weights(low_h, size[0]), _weights(low_w, size[1])
    row_start, row_count = _blocks(rows[0], low_h)
    col_start, col_count = _blocks(cols[0], low_w)
    count = candidate.sum(dim=0)  # candidates per window
    order = _candidate_lists(candidate, int(count.max()))  # (K_max, h, w) ascending class ids
    # windows with one candidate: that class on the whole block (plus a trash slot at the end
    # for the padding of blocks written below)
    label_map = torch.empty(size[0] * size[1] + 1, dtype=torch.int32)
    label_map[:-1] = (
        order[0].to(torch.int32).index_select(0, rows[0]).index_select(1, cols[0]).flatten()
    )
    trash = size[0] * size[1]
    has_pixels = (row_count[:, None] > 0) & (col_count[None, :] > 0)
    block_r, block_c = int(row_count.max()), int(col_count.max())
    r_off, c_off = torch.arange(block_r), torch.arange(block_c)
    flat = logits.flatten()
    for k in torch.unique(count[has_pixels & (count > 1)]).tolist():
        windows = torch.nonzero(has_pixels & (count == k))
        # 16 bytes of temporaries per (window, R, C, k) element: bound windows per step
        step = max(1, budget_bytes // (k * block_r * block_c * 16))
        for part in torch.split(windows, step):
            wi, wj = part[:, 0], part[:, 1]
            classes = order[:k, wi, wj].T  # (n, k) ascending
            ys = (row_start[wi][:, None] + r_off).clamp(max=size[0] - 1)  # (n, R)
            xs = (col_start[wj][:, None] + c_off).clamp(max=size[1] - 1)  # (n, C)
            # the second source row/column; where PyTorch has a single source its weight
            # w1 is 0 and the neighbour's value drops out of the sum
            i1, j1 = (wi + 1).clamp(max=low_h - 1), (wj + 1).clamp(max=low_w - 1)
            base = classes * (low_h * low_w)
            v00, v01, v10, v11 = (
                flat[base + (y * low_w + x)[:, None]][:, None, :]
                for y, x in ((wi, wj), (wi, j1), (i1, wj), (i1, j1))
            )  # (n, 1, k)
            wx0, wx1 = cols[2][xs][:, :, None], cols[3][xs][:, :, None]  # (n, C, 1)
            top = _fma(v00, wx0, v01 * wx1)  # (n, C, k)
            bottom = _fma(v10, wx0, v11 * wx1)
            # per column, a class's value down the block lies between its top and bottom
            # values: where one class's range clears all others', the column is decided
            low, high = torch.minimum(top, bottom), torch.maximum(top, bottom)
            alive = high >= low.max(dim=2, keepdim=True).values - tolerance  # (n, C, k)
            first_alive = torch.gather(classes, 1, alive.to(torch.uint8).argmax(dim=2))  # (n, C)
            winners = first_alive[:, None, :].expand(-1, block_r, -1).clone()  # (n, R, C)
            open_n, open_c = torch.nonzero(alive.sum(dim=2) > 1, as_tuple=True)
            if open_n.numel():
                wy0 = rows[2][ys[open_n]][:, :, None]  # (m, R, 1)
                wy1 = rows[3][ys[open_n]][:, :, None]
                top_m, bottom_m = (
                    top[open_n, open_c][:, None, :],
                    bottom[open_n, open_c][:, None, :],
                )  # (m, 1, k)
                values = _fma(top_m, wy0, bottom_m * wy1)  # (m, R, k)
                # argmax returns the first maximum: the lowest class id on ties, like the reference
                best = torch.gather(classes[open_n], 1, values.argmax(dim=2))  # (m, R)
                winners[open_n, :, open_c] = best
            valid = (r_off[None, :, None] < row_count[wi][:, None, None]) & (
                c_off[None, None, :] < col_count[wj][:, None, None]
            )
            target = torch.where(valid, ys[:, :, None] * size[1] + xs[:, None, :], trash)
            label_map[target.flatten()] = winners.flatten().to(torch.int32)
    return label_map[:-1].reshape(size).numpy()


def _candidate_lists(candidate: torch.Tensor, kmax: int) -> torch.Tensor:
    """``(kmax, h, w)``: each window's candidate class ids in ascending order (padded with 0)."""
    c, i, j = torch.nonzero(candidate, as_tuple=True)  # sorted by class: ascending per window
    slot = torch.cumsum(candidate.to(torch.int32), dim=0)[c, i, j] - 1
    order = torch.zeros((kmax, *candidate.shape[1:]), dtype=torch.int64)
    order[slot.to(torch.int64), i, j] = c
    return order


def _blocks(first_source: torch.Tensor, low_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Start and length of the run of output indices whose first source index is each ``i``."""
    count = torch.bincount(first_source, minlength=low_size)
    start = torch.cumsum(count, 0) - count
    return start, count


def _fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``float32(a * b + c)`` rounded once, like a fused multiply-add (float32 inputs).

    The product of two float32 values is exact in float64, and so (barring a double
    rounding that needs a 29-bit coincidence) is the sum.
    """
    result = a.double() * b.double()
    result += c  # float32 promoted inside the add: no float64 copy of c
    return result.float()


def _interpolate(flat, classes, corners, wx0, wx1, wy0, wy1) -> torch.Tensor:
    """PyTorch's separable bilinear for one (class, pixel) per element: width pass, height pass."""
    base = classes.to(torch.int64) * flat.shape[1]
    values = flat.flatten()
    v00, v01, v10, v11 = (values[base + c] for c in corners)
    top = _fma(v00, wx0, v01 * wx1)
    bottom = _fma(v10, wx0, v11 * wx1)
    return _fma(top, wy0, bottom * wy1)


def _weights(in_size: int, out_size: int) -> tuple[torch.Tensor, ...]:
    """``(i0, i1, w0, w1)`` per output index, read from PyTorch's own 1-D interpolation.

    Interpolating one-hot rows gives each source's weight exactly (``1 * w + 0``).
    Where only one source contributes, ``i1 = i0`` and ``w1 = 0``.
    """
    eye = torch.eye(in_size).reshape(1, in_size, 1, in_size)
    matrix = F.interpolate(eye, size=(1, out_size), mode="bilinear", align_corners=False)[
        0, :, 0, :
    ].T
    nonzero = matrix != 0
    count = nonzero.sum(dim=1)
    if int(count.max()) > 2 or int(count.min()) < 1:
        raise _EmulationError
    i0 = nonzero.to(torch.uint8).argmax(dim=1)
    i1 = torch.where(count > 1, in_size - 1 - nonzero.flip(1).to(torch.uint8).argmax(dim=1), i0)
    index = torch.arange(out_size)
    w0 = matrix[index, i0]
    w1 = torch.where(count > 1, matrix[index, i1], torch.zeros(()))
    return i0, i1, w0, w1


class _EmulationError(Exception):
    """PyTorch's kernel is not the separable one this module emulates."""


_verified: dict[tuple, bool] = {}
_verified_lock = threading.Lock()


def _emulation_matches(shape: torch.Size, size: tuple[int, int]) -> bool:
    """Whether the emulation equals ``F.interpolate`` bit for bit for this geometry (cached)."""
    num_classes, low_h, low_w = shape
    threads = torch.get_num_threads()
    if threads == 1 and num_classes == 3:
        return False  # PyTorch's single-thread 3-channel kernel rounds differently
    key = (low_h, low_w, size, threads, torch.__version__)
    with _verified_lock:
        if key not in _verified:
            _verified[key] = _check_emulation(low_h, low_w, size)
        return _verified[key]


def _check_emulation(low_h: int, low_w: int, size: tuple[int, int]) -> bool:
    height, width = size
    probe = torch.randn(2, low_h, low_w, generator=torch.Generator().manual_seed(0))
    try:
        rows, cols = _weights(low_h, height), _weights(low_w, width)
    except _EmulationError:
        return False
    # every row and column at least once, on a sparse diagonal-ish pixel sample
    ys = torch.cat([torch.arange(height), torch.randint(0, height, (20_000,))])
    xs = torch.cat([torch.arange(height) % width, torch.randint(0, width, (20_000,))])
    ys = torch.cat([ys, torch.arange(width) % height])
    xs = torch.cat([xs, torch.arange(width)])
    y0, y1, wy0, wy1 = (t[ys] for t in rows)
    x0, x1, wx0, wx1 = (t[xs] for t in cols)
    corners = (y0 * low_w + x0, y0 * low_w + x1, y1 * low_w + x0, y1 * low_w + x1)
    flat = probe.reshape(2, -1)
    reference = F.interpolate(probe[None], size=size, mode="bilinear", align_corners=False)[0]
    for channel in range(2):
        classes = torch.full(ys.shape, channel, dtype=torch.int64)
        mine = _interpolate(flat, classes, corners, wx0, wx1, wy0, wy1)
        if not torch.equal(mine, reference[channel, ys, xs]):
            return False
    return True
