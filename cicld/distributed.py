"""What the processes of a run tell each other, in one place.

With several processes (torchrun, ``accelerate launch``) every one of them must take the same
branch (stop together, save together), or the others wait forever in their next collective:
:func:`everywhere` is the question they all ask before such a branch. :func:`sum_everywhere` adds
up what each process counted (a confusion matrix) and :func:`broadcast_text` tells the others what
the main process chose (a run folder's name).
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist


def everywhere(accelerator, flag: bool | torch.Tensor) -> bool:
    """Whether the boolean ``flag`` holds in every process (one all-reduce with several processes:
    also their barrier). Every process must call it at the same point."""
    if accelerator.num_processes == 1:
        return bool(flag)
    value = torch.as_tensor(flag, device=accelerator.device).to(torch.int32).reshape(1)
    # Not accelerator.reduce: its "min" is a sum (Accelerate 1.x), which asks "in any process".
    return bool(_all_reduce(value, dist.ReduceOp.MIN).item())


def sum_everywhere(accelerator, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the processes (itself with one process)."""
    if accelerator.num_processes == 1:
        return tensor
    return _all_reduce(tensor, dist.ReduceOp.SUM)


def broadcast_text(accelerator, text: str | None) -> str:
    """The main process's ``text``, in every process (the others pass None)."""
    if accelerator.num_processes == 1:
        return text
    data = text.encode() if accelerator.is_main_process else b""
    length = torch.tensor([len(data)], dtype=torch.int64, device=accelerator.device)
    dist.broadcast(length, src=0)
    payload = torch.zeros(int(length.item()), dtype=torch.uint8, device=accelerator.device)
    if accelerator.is_main_process:
        payload.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(payload, src=0)
    return bytes(payload.cpu().tolist()).decode()


def _all_reduce(tensor: torch.Tensor, op) -> torch.Tensor:
    reduced = tensor.clone()
    dist.all_reduce(reduced, op=op)
    return reduced


def leave_together(accelerator) -> None:
    """The last collective of a run that ended well in every process: a barrier, then a moment
    with the GIL released. Call it before the process group is torn down.

    Gloo's worker thread frees the tensors of the collective it ran last only once it holds the
    GIL; the process group's teardown (when DDP's reducer lets go of the group) joins that thread
    while holding the GIL. Had the teardown come first, the process hung after its last line
    (seen in CI: about one run in four on a loaded 2-core machine). A barrier holds no tensors,
    and while a process waits for it, and sleeps after it, the workers get the GIL they need."""
    if accelerator.num_processes > 1:
        accelerator.wait_for_everyone()
        time.sleep(0.05)
