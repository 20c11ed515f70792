"""What each encoder costs per image: FLOPs of the image tower counted from its config, and its
forward time relative to the dense base, measured in one process on the same batch.

FLOPs count the matrix products (2 per multiply-add), which is what torch's FlopCounterMode counts
too (the test checks the dense count against it); norms, activations and softmax are left out.
A CLIP-MoE block runs top_k expert FFNs per token plus its router, so its FFN cost is top_k times
the dense one: the *active* parameters per token, not the total.
"""

from __future__ import annotations

import statistics
import time


def image_flops(vision_config, projection_dim: int) -> dict:
    """FLOPs per image of a (dense or MoE) CLIP vision tower + projection, from its config.

    Returns {"total", "attention", "ffn", "router", "embed"} (FLOPs); a dense config (no
    num_experts) counts one FFN per block."""
    d, inter = vision_config.hidden_size, vision_config.intermediate_size
    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    seq = patches + 1  # CLS
    layers = vision_config.num_hidden_layers
    moe = set(getattr(vision_config, "moe_layer_indices", None) or [])
    top_k = getattr(vision_config, "num_experts_per_tok", 1)
    experts = getattr(vision_config, "num_experts", 1)
    embed = 2 * patches * 3 * vision_config.patch_size ** 2 * d
    attention = layers * (2 * seq * 4 * d * d + 2 * 2 * seq * seq * d)  # q, k, v, out projections; QK^T and AV
    ffn_dense = 2 * seq * 2 * d * inter
    ffn = sum(ffn_dense * (top_k if i in moe else 1) for i in range(layers))
    router = len(moe) * 2 * seq * d * experts
    projection = 2 * d * projection_dim
    total = embed + attention + ffn + router + projection
    return {"total": total, "attention": attention, "ffn": ffn, "router": router, "embed": embed + projection}


def model_image_flops(model_dir: str) -> dict:
    from clipmoe_encoder.dmu.models import load_model

    config = load_model(model_dir).config  # the loaded config: moe_layer_indices resolved
    return image_flops(config.vision_config, config.projection_dim)


def counted_image_flops(model, pixel_values) -> int:
    """FLOPs per image of model.get_image_features as torch's FlopCounterMode counts them."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.get_image_features(pixel_values=pixel_values)
    return counter.get_total_flops() // pixel_values.shape[0]


def relative_forward_times(model_dirs: dict[str, str], pixel_values, repeats: int = 7, reference: str = "base") -> dict:
    """Median seconds of one image-tower forward of each model on the same batch, and its ratio to
    `reference`'s. The models take turns within every repeat, so a change of machine load during
    the measurement falls on all of them alike; one warm-up forward each is not timed."""
    import torch

    from clipmoe_encoder.dmu.models import load_model

    models = {name: load_model(path).eval() for name, path in model_dirs.items()}
    times = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            model.get_image_features(pixel_values=pixel_values)
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model.get_image_features(pixel_values=pixel_values)
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {name: {"median_s": medians[name], "relative": medians[name] / medians[reference], "repeats": repeats,
                   "batch": int(pixel_values.shape[0])} for name in models}
