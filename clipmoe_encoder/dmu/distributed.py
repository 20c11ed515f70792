"""Process-group plumbing through accelerate: one CPU process, torchrun/accelerate DDP, or DeepSpeed.

`Accelerator` reads torchrun's / accelerate's environment (RANK, WORLD_SIZE, MASTER_ADDR...) and an
accelerate config file (DeepSpeed ZeRO), so the same code runs in every setting.
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import DistributedType


def resolve_mixed_precision(choice: str | None) -> str:
    """"auto": bf16 where the device supports it (CUDA), otherwise none (CPU)."""
    if choice in (None, "auto"):
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return choice


def make_accelerator(mixed_precision: str | None = "auto") -> Accelerator:
    # Some experts (or a frozen tower's router) may get no token in a step: DDP must not wait for them.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # accelerate only treats a torchrun/multi-process launch as MULTI_CPU (gloo) when told cpu=True.
    cpu = not torch.cuda.is_available()
    # Our scheduler counts global optimizer steps: without step_scheduler_with_optimizer=False,
    # accelerate would step it once per process per step (it assumes per-process batches).
    return Accelerator(cpu=cpu, mixed_precision=resolve_mixed_precision(mixed_precision), kwargs_handlers=[ddp],
                       step_scheduler_with_optimizer=False)


def is_deepspeed(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def gather_rows(accelerator: Accelerator, tensor: torch.Tensor, total: int) -> torch.Tensor:
    """Rows computed round-robin by rank (index i on rank i % world) back in dataset order.
    Every rank must pass the same number of rows (pad with the last index)."""
    if accelerator.num_processes == 1:
        return tensor[:total]
    gathered = accelerator.gather(tensor.contiguous())  # (world * n, ...) rank-major
    world = accelerator.num_processes
    n = tensor.shape[0]
    interleaved = gathered.view(world, n, *tensor.shape[1:]).transpose(0, 1).reshape(world * n, *tensor.shape[1:])
    return interleaved[:total]


# How long the other ranks may wait while the main process works alone (writing ~1.2M features, k-means,
# routing statistics). Generous on purpose: a hang elsewhere is still caught by the default group's
# timeout, which this long wait does not change (see main_process_alone).
MAIN_ALONE_TIMEOUT = timedelta(hours=6)


@contextmanager
def main_process_alone(accelerator: Accelerator, timeout: timedelta = MAIN_ALONE_TIMEOUT):
    """Every rank enters; the body does the main process's solo work; every rank leaves together.

    The other ranks wait on a barrier of a separate gloo group whose timeout is `timeout`, instead of
    a barrier of the default (NCCL) group: NCCL's default 10-minute timeout would abort them while
    rank 0 clusters 1.2M samples, and raising the default group's timeout for the whole run would
    also let a genuinely hung training collective block for hours. A gloo barrier holds no GPU
    stream, so NCCL's watchdog sees nothing pending. If the main process fails in the body, the
    launcher (torchrun / accelerate launch) stops the waiting ranks.
    """
    if accelerator.num_processes == 1:
        yield
        return
    # new_group is itself collective: every rank creates the group here, before the solo work starts
    group = dist.new_group(backend="gloo", timeout=timeout)
    yield
    dist.barrier(group=group)
    dist.destroy_process_group(group)
