"""Data batches addressed by training step, so a resumed run sees exactly the same data.

For step ``s`` the batch is a fixed slice of epoch ``s // steps_per_epoch``'s permutation (drawn
from (seed, epoch)), and each process takes its own part of that global batch. Augmentation is
seeded per (seed, epoch, index) inside the datasets. Nothing depends on how many steps ran before
in this process, so resuming at step ``s`` needs no skipping and no saved sampler state.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cicld.errors import DataError


def step_batches(
    dataset: Dataset,
    batch_size: int,
    *,
    start_step: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    device: torch.device | None = None,
) -> Iterator[dict]:
    """Yield this process's batch for ``start_step``, ``start_step + 1``, ... forever."""
    global_batch = batch_size * world_size
    if batch_size > 1 and hasattr(dataset, "require_batchable"):
        dataset.require_batchable()  # whole images of several sizes cannot be stacked: one line now
    if len(dataset) < global_batch:
        raise DataError(
            f"{getattr(dataset, 'root', 'the dataset')} has {len(dataset)} frames, fewer than one batch "
            f"({batch_size} per process x {world_size} processes)"
        )
    steps_per_epoch = len(dataset) // global_batch
    step = start_step
    while True:
        epoch, offset = divmod(step, steps_per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(len(dataset))
        batches = [
            order[(b * world_size + rank) * batch_size : (b * world_size + rank + 1) * batch_size].tolist()
            for b in range(offset, steps_per_epoch)
        ]
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)  # before the loader forks its workers, so they see it
        loader = DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=num_workers,
            generator=torch.Generator(),  # keeps the loader from drawing on the global RNG
            worker_init_fn=quiet_dropped_connections,
            pin_memory=device is not None and device.type == "cuda",
        )
        for batch in loader:
            if device is not None:
                batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            yield batch
            step += 1


def quiet_dropped_connections(worker_id: int) -> None:
    """``worker_init_fn``: no traceback from a data-loading worker when the main process drops a
    connection to it, as it does when Ctrl-C stops training.

    A worker hands each batch's shared memory over through multiprocessing's resource sharer; a
    main process interrupted mid-handshake closes the connection, and the sharer's thread prints
    the resulting EOFError or ConnectionError through ``sys.excepthook`` (about one Ctrl-C in
    thirty under load), after cicld's one-line "interrupted" message. Any other error still prints.
    """
    default = sys.excepthook

    def hook(kind, value, traceback) -> None:
        if not issubclass(kind, (EOFError, ConnectionError)):
            default(kind, value, traceback)

    sys.excepthook = hook
