"""Training batches built ahead of the step that needs them, in DataLoader worker processes.

A stage's batch for step s is a pure function of s (its random draws are seeded by the step), so a
resumed run, a run with worker processes and a run without them see the same batches. `StepBatches`
asks a `torch.utils.data.DataLoader` (persistent workers, pinned memory on a GPU) for the batches of
steps s, s+1, ... and hands them out in order; asking for a step out of order restarts the stream there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

Batch = dict[str, torch.Tensor]
# Far more steps than any run takes: the loader's one "epoch" is the rest of the stage.
_HORIZON = 10**12


class _StepDataset(Dataset[Batch]):
    def __init__(self, make: Callable[[int], Batch]) -> None:
        self.make = make

    def __len__(self) -> int:
        return _HORIZON

    def __getitem__(self, step: int) -> Batch:
        return self.make(step)


class StepBatches:
    """`get(step)` returns `make(step)`; with workers > 0 the batches come from worker processes that
    run `prefetch` batches ahead of the training step."""

    def __init__(
        self, make: Callable[[int], Batch], workers: int = 0, pin_memory: bool = False, prefetch: int = 4
    ) -> None:
        self.make = make
        self.workers = workers
        self.pin_memory = pin_memory
        self.prefetch = prefetch
        self._iter: Iterator[Any] | None = None
        self._next = -1

    def get(self, step: int) -> Batch:
        if self.workers <= 0:
            return self.make(step)
        if self._iter is None or step != self._next:
            loader = DataLoader(
                _StepDataset(self.make),
                batch_size=None,
                sampler=range(step, _HORIZON),
                num_workers=self.workers,
                persistent_workers=True,
                pin_memory=self.pin_memory,
                prefetch_factor=self.prefetch,
            )
            self._iter = iter(loader)
        self._next = step + 1
        batch: Batch = next(self._iter)
        return batch

    def close(self) -> None:
        self._iter = None
