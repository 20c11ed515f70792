"""Atomic, resumable training checkpoints.

A checkpoint is a directory `ckpt-<step>` written as `ckpt-<step>.tmp` and renamed with os.replace
once complete, so a run killed at any moment leaves either the previous checkpoint or the new one.
Contents: trainable weights (safetensors), optimizer and scheduler state (torch.save, read back with
weights_only=True), each rank's RNG state, and meta.json (step, counters). Under DeepSpeed the
engine's own save_state is used for the sharded optimizer.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import torch
from safetensors.torch import load_file, save_file

from .distributed import is_deepspeed

_CKPT = re.compile(r"^ckpt-(\d{8})$")


def latest_checkpoint(directory: str) -> str | None:
    if not os.path.isdir(directory):
        return None
    steps = sorted(int(m[1]) for m in map(_CKPT.match, os.listdir(directory)) if m)
    return os.path.join(directory, f"ckpt-{steps[-1]:08d}") if steps else None


def _rng_state():
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda{i}"] = s
    return state


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    cuda = [state[k] for k in sorted(state) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(accelerator, directory, step, model, optimizer, scheduler, trainable_names, meta):
    """Every rank calls this (collective). Rank 0 writes the shared state, each rank its RNG."""
    final = os.path.join(directory, f"ckpt-{step:08d}")
    tmp = final + ".tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    accelerator.wait_for_everyone()
    if is_deepspeed(accelerator):
        accelerator.save_state(tmp)
    elif accelerator.is_main_process:
        state = accelerator.unwrap_model(model).state_dict()
        save_file({n: state[n].detach().contiguous().cpu() for n in trainable_names}, os.path.join(tmp, "trainable.safetensors"))
        torch.save(optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
        torch.save(scheduler.state_dict(), os.path.join(tmp, "scheduler.pt"))
    torch.save(_rng_state(), os.path.join(tmp, f"rng_{accelerator.process_index}.pt"))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(dict(meta, step=step), f)
        os.replace(tmp, final)
        for name in os.listdir(directory):  # older checkpoints are no longer needed
            m = _CKPT.match(name)
            if m and int(m[1]) < step:  # only the newest is kept
                shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path, model, optimizer, scheduler) -> dict:
    """Restore everything save_checkpoint wrote; returns meta (with 'step')."""
    from ..errors import CLIPMoEError

    # a checkpoint only appears once complete (renamed from .tmp), so a missing piece was removed by hand
    needed = ["meta.json"] if is_deepspeed(accelerator) else ["meta.json", "trainable.safetensors", "optimizer.pt", "scheduler.pt"]
    absent = [name for name in needed if not os.path.isfile(os.path.join(path, name))]
    if absent:
        raise CLIPMoEError(f"{path}: checkpoint is incomplete (no {absent[0]}); remove this checkpoint folder to retrain "
                           "the stage from its start, or pass --restart")
    if is_deepspeed(accelerator):
        accelerator.load_state(path)
    else:
        weights = load_file(os.path.join(path, "trainable.safetensors"))
        missing = set(weights) - set(dict(accelerator.unwrap_model(model).named_parameters()))
        if missing:
            raise CLIPMoEError(f"{path}: checkpoint holds {min(missing)!r}, which this model does not have (settings changed?)")
        accelerator.unwrap_model(model).load_state_dict(weights, strict=False)
        device = accelerator.device
        optimizer.load_state_dict(torch.load(os.path.join(path, "optimizer.pt"), map_location=device, weights_only=True))
        scheduler.load_state_dict(torch.load(os.path.join(path, "scheduler.pt"), weights_only=True))
    rng_file = os.path.join(path, f"rng_{accelerator.process_index}.pt")
    if os.path.isfile(rng_file):
        _set_rng_state(torch.load(rng_file, weights_only=True))
    with open(os.path.join(path, "meta.json")) as f:
        return json.load(f)
