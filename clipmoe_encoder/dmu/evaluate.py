"""Held-out image-text retrieval (R@1/5/10 both ways) for the comparison table of `clipmoe dmu table`.

One caption per image (the pairs of a data file); a light check to compare DMU with the baselines
on the same held-out pairs. The full benchmark suite is `clipmoe eval`.
"""

from __future__ import annotations

import torch

from .data import ImageTextDataset, load_records
from .models import load_model, load_preprocessors, text_length


@torch.no_grad()
def embed_pairs(model_dir, data_path, image_root=None, batch_size: int = 64, device="cpu"):
    model = load_model(model_dir).to(device).eval()
    tokenizer, processor = load_preprocessors(model_dir)
    records, _ = load_records(data_path, image_root)
    dataset = ImageTextDataset(records, processor, tokenizer, text_length(model, tokenizer))
    images, texts = [], []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
        batch = {k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}
        out = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], attention_mask=batch["attention_mask"])
        images.append(out.image_embeds.float().cpu())
        texts.append(out.text_embeds.float().cpu())
    return torch.cat(images), torch.cat(texts)


def recall_at_k(image_embeds, text_embeds, ks=(1, 5, 10)) -> dict:
    """Pair i is (image i, text i). Rank of the true partner among all candidates, both ways."""
    sim = image_embeds @ text_embeds.t()
    truth = sim.diagonal()
    i2t_rank = (sim > truth[:, None]).sum(1)  # how many texts beat the true one
    t2i_rank = (sim.t() > truth[:, None]).sum(1)
    out = {}
    for k in ks:
        out[f"i2t_R@{k}"] = 100.0 * float((i2t_rank < k).float().mean())
        out[f"t2i_R@{k}"] = 100.0 * float((t2i_rank < k).float().mean())
    return out


def retrieval_scores(model_dir, data_path, image_root=None, device="cpu") -> dict:
    return recall_at_k(*embed_pairs(model_dir, data_path, image_root, device=device))
