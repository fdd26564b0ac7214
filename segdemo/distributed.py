"""Which share of the work this process does, for ``predict`` and ``evaluate --model``.

    accelerate launch --multi_gpu --num_processes 4 -m segdemo predict photos/ --out out/ ...

:func:`workers` reads the environment ``accelerate launch`` (or ``torchrun``) sets up:
with ``WORLD_SIZE`` > 1 it joins the process group through accelerate's
``PartialState`` (NCCL on GPUs, each process on its own GPU; gloo on CPUs), else it is
one process and imports nothing distributed. Work is split as
``PartialState.split_between_processes`` does: contiguous, in order, sizes differing by
at most one; every item goes to exactly one process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


def world_size() -> int:
    """Number of processes the launcher started (1 without a launcher)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


@dataclass(frozen=True)
class Workers:
    """This process's place among ``count`` processes.

    Attributes:
        index: this process's rank, ``0..count-1``.
        count: number of processes.
        state: accelerate's ``PartialState`` (``None`` for one process).
    """

    index: int = 0
    count: int = 1
    state: Any = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints reports and writes the shared files."""
        return self.index == 0

    def split(self, items: list[T]) -> list[T]:
        """This process's contiguous share of ``items`` (the same order on every process)."""
        if self.count == 1:
            return list(items)
        with self.state.split_between_processes(list(items)) as share:
            return list(share)

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value`` (picklable), in rank order, on every process."""
        if self.count == 1:
            return [value]
        from accelerate.utils import gather_object

        return list(gather_object([value]))

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the body on the main process first, then on the others (downloads, caches).

        The barriers hold even when the body raises, so the processes stay in step.
        """
        if self.count == 1:
            yield
            return
        if not self.is_main:
            self.barrier()
        try:
            yield
        finally:
            if self.is_main:
                self.barrier()

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.count > 1:
            self.state.wait_for_everyone()


def workers() -> Workers:
    """This process's :class:`Workers`; joins the process group when launched with > 1.

    Call it before loading a model: on GPUs it selects this process's device, so the
    model's ``"cuda"`` is ``cuda:<local rank>``.
    """
    if world_size() == 1:
        return Workers()
    import torch
    from accelerate import PartialState

    # `accelerate launch --multi_gpu` on a machine without CUDA: one gloo group on CPUs
    # (as train/run.py's make_accelerator does) instead of N unrelated processes
    state = PartialState(cpu=not torch.cuda.is_available())
    return Workers(state.process_index, state.num_processes, state)


__all__ = ["Workers", "workers", "world_size"]
