"""Functions run in spawned gloo processes by the tests (must be importable, hence a module)."""

import os

from types import SimpleNamespace

import torch
import torch.distributed as dist

from clipmoe_encoder.dmu.losses import contrastive_loss
from clipmoe_encoder.moe import aux_losses, routing_stats, summed_over_processes

# the MoE loss fields of a tower config
AUX_CONFIG = SimpleNamespace(router_aux_loss_coef=0.01, router_z_loss_coef=0.001, router_aux_loss_count="top_k")


def loss_worker(rank, world, init_file, inputs, out_dir):
    """Rank r takes its contiguous slice of the global batch; saves loss values and input grads."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        n = inputs["image"].shape[0] // world
        sl = slice(rank * n, (rank + 1) * n)
        image = inputs["image"][sl].clone().requires_grad_(True)
        text = inputs["text"][sl].clone().requires_grad_(True)
        loss, logged = contrastive_loss(image, text, 20.0, 0.1, inputs["valid"][sl])
        loss.backward()
        tok = inputs["router"].shape[0] // world
        router = inputs["router"][rank * tok:(rank + 1) * tok].clone().requires_grad_(True)
        aux, _, _ = aux_losses(summed_over_processes([routing_stats(router, 2)]), AUX_CONFIG)
        aux.backward()
        torch.save({"loss": loss.detach(), "logged": logged, "image_grad": image.grad, "text_grad": text.grad,
                    "aux": aux.detach(), "router_grad": router.grad}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def main_alone_worker(rank, world, port, default_timeout_s, solo_s, use_long_wait, out_dir):
    """A real Accelerator over gloo whose default group times out after default_timeout_s; rank 0 works
    alone for solo_s while the others wait in main_process_alone (or, as a control, at the default
    group's barrier). Writes 'ok' or the error to out_dir/rank<r>.txt."""
    import time
    from datetime import timedelta

    from accelerate import Accelerator, InitProcessGroupKwargs

    from clipmoe_encoder.dmu.distributed import main_process_alone

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True, kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=default_timeout_s))])
    outcome = "ok"
    try:
        if use_long_wait:
            with main_process_alone(accelerator):
                if accelerator.is_main_process:
                    time.sleep(solo_s)
        else:
            if accelerator.is_main_process:
                time.sleep(solo_s)
            accelerator.wait_for_everyone()
        accelerator.wait_for_everyone()  # the default group still works afterwards
    except Exception as err:  # noqa: BLE001 - the outcome is what the test checks
        outcome = f"error: {err}"
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write(outcome)
    if dist.is_initialized():
        dist.destroy_process_group()
