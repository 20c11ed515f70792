"""Final normalised image and text embeddings of a model over the whole training set (for k-means).

Every rank embeds its round-robin shard; the shards are gathered in fp16 (unit vectors: fp16 keeps
~3 significant digits, far below what moves a k-means assignment, at half the memory of fp32) and
only the main process keeps them. They are stored as one folder of .npy files (image, text: (N, D)
fp16; valid: (N,) bool) that the clustering reads memory-mapped, so 1.2M x 768 features take
2 x 1.8 GB on disk and are paged in rather than loaded whole.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .distributed import gather_rows

FEATURE_FILES = ("image", "text", "valid")


@torch.no_grad()
def compute_features(accelerator, model, dataset, batch_size: int = 256, num_workers: int = 0, desc="features"):
    """{'image': (N, D) fp16, 'text': (N, D) fp16, 'valid': (N,) bool} numpy arrays on the main process,
    None on the others (which do not need them: only the main process clusters)."""
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
        image.append(out.image_embeds.half())
        text.append(out.text_embeds.half())
        valid.append(batch["valid"])
    model.to(home)
    gathered = {
        "image": gather_rows(accelerator, torch.cat(image), n),
        "text": gather_rows(accelerator, torch.cat(text), n),
        "valid": gather_rows(accelerator, torch.cat(valid).to(torch.uint8), n).bool(),
    }
    if not accelerator.is_main_process:
        return None
    return {k: v.cpu().numpy() for k, v in gathered.items()}


def save_features(features: dict, folder: str):
    """Writes folder/{image,text,valid}.npy atomically: into folder.tmp, then one rename of the folder,
    so a run killed mid-write leaves no folder that looks complete."""
    tmp = folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # a previous run's partial write
    os.makedirs(tmp)
    for name in FEATURE_FILES:
        np.save(os.path.join(tmp, f"{name}.npy"), np.ascontiguousarray(features[name]))
    os.replace(tmp, folder)


def load_features(folder: str) -> dict:
    """The saved arrays, memory-mapped read-only (pages are read as the clustering touches them)."""
    return {name: np.load(os.path.join(folder, f"{name}.npy"), mmap_mode="r") for name in FEATURE_FILES}


def has_features(folder: str) -> bool:
    return all(os.path.isfile(os.path.join(folder, f"{name}.npy")) for name in FEATURE_FILES)


def save_tensors(tensors: dict, path: str):
    """Atomic safetensors write (temp file + os.replace); the cluster labels are kept this way."""
    tmp = path + ".tmp"
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
    os.replace(tmp, path)


def load_tensors(path: str) -> dict:
    return load_file(path)
