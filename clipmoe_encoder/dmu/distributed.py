"""Process-group plumbing through accelerate: one CPU process, torchrun/accelerate DDP, or DeepSpeed.

`Accelerator` reads torchrun's / accelerate's environment (RANK, WORLD_SIZE, MASTER_ADDR...) and an
accelerate config file (DeepSpeed ZeRO), so the same code runs in every setting.
"""

from __future__ import annotations

import torch
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
