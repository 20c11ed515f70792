"""Final normalised image and text embeddings of a model over the whole training set (for k-means).

Rows are computed round-robin across processes and gathered back into dataset order; the result is
cached as safetensors so a rerun reuses it.
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .distributed import gather_rows


@torch.no_grad()
def compute_features(accelerator, model, dataset, batch_size: int = 256, num_workers: int = 0, desc="features"):
    """{'image': (N, D), 'text': (N, D), 'valid': (N,)} on CPU, identical on every rank."""
    home = next(model.parameters()).device  # the caller's model goes back there afterwards
    model = model.to(accelerator.device).eval()
    world, rank, n = accelerator.num_processes, accelerator.process_index, len(dataset)
    mine = list(range(rank, n, world))
    per_rank = -(-n // world)
    mine += [mine[-1] if mine else 0] * (per_rank - len(mine))  # equal counts for the gather
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, mine), batch_size=batch_size,
                                         num_workers=num_workers)
    image, text, valid = [], [], []
    for batch in tqdm(loader, desc=desc, disable=not accelerator.is_main_process, dynamic_ncols=True):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            out = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], attention_mask=batch["attention_mask"])
        image.append(out.image_embeds.float())
        text.append(out.text_embeds.float())
        valid.append(batch["valid"])
    model.to(home)
    return {
        "image": gather_rows(accelerator, torch.cat(image), n).cpu(),
        "text": gather_rows(accelerator, torch.cat(text), n).cpu(),
        "valid": gather_rows(accelerator, torch.cat(valid).to(torch.uint8), n).cpu().bool(),
    }


def save_tensors(tensors: dict, path: str):
    """Atomic safetensors write (temp file + os.replace)."""
    tmp = path + ".tmp"
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
    os.replace(tmp, path)


def load_tensors(path: str) -> dict:
    return load_file(path)
