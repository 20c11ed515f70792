"""Per-layer routing statistics of a CLIP-MoE on a data set (paper Fig. 3 style heat maps)."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm


class RoutingAccumulator:
    """Counts, per tower and MoE layer, how often each expert is the 1st / 2nd choice, its share of
    all top-k assignments (load), and the mean router entropy, from the model's routing statistics
    (text padding excluded there)."""

    def __init__(self, num_experts: int, top_k: int):
        self.E, self.k = num_experts, top_k
        self.data = {}

    def add(self, tower: str, routing_stats):
        """Add one batch: the tower's per-layer RoutingStats (the model's output, padding excluded)."""
        for layer, stats in enumerate(routing_stats):
            slot = self.data.setdefault(tower, {}).setdefault(layer, {
                "choice": np.zeros((self.k, self.E)), "entropy": 0.0, "tokens": 0})
            slot["choice"] += stats.choices.cpu().numpy()
            slot["entropy"] += float(stats.entropy_sums)
            slot["tokens"] += int(stats.tokens)

    def result(self, layer_indices: dict) -> dict:
        out = {"num_experts": self.E, "top_k": self.k}
        for tower, layers in self.data.items():
            rows = [layers[i] for i in sorted(layers)]
            tokens = [max(r["tokens"], 1) for r in rows]
            out[tower] = {
                "layers": list(layer_indices.get(tower, range(len(rows)))),
                "tokens_per_layer": [r["tokens"] for r in rows],
                "first_choice": [(r["choice"][0] / t).tolist() for r, t in zip(rows, tokens)],
                "second_choice": [(r["choice"][1] / t).tolist() for r, t in zip(rows, tokens)] if self.k > 1 else None,
                "load": [(r["choice"].sum(0) / (t * self.k)).tolist() for r, t in zip(rows, tokens)],
                "entropy": [r["entropy"] / t for r, t in zip(rows, tokens)],
                "max_entropy": float(np.log(self.E)),
            }
        return out


@torch.no_grad()
def collect_routing(model, dataset, max_samples: int = 256, batch_size: int = 32, device="cpu", progress: bool = True) -> dict:
    model = model.to(device).eval()
    cfg = model.config
    acc = RoutingAccumulator(cfg.vision_config.num_experts, cfg.vision_config.num_experts_per_tok)
    n = min(max_samples, len(dataset))
    for start in tqdm(range(0, n, batch_size), desc="routing statistics", unit="batch", dynamic_ncols=True, disable=not progress):
        items = [dataset[i] for i in range(start, min(n, start + batch_size))]
        batch = {k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}
        keep = batch["valid"]
        if not bool(keep.any()):
            continue
        batch = {k: v[keep] for k, v in batch.items()}
        out = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], attention_mask=batch["attention_mask"],
                    output_router_logits=True)
        acc.add("vision", out.vision_model_output.routing_stats)
        acc.add("text", out.text_model_output.routing_stats)
    layers = {"vision": cfg.vision_config.moe_layer_indices, "text": cfg.text_config.moe_layer_indices}
    result = acc.result(layers)
    result["samples"] = n
    return result
