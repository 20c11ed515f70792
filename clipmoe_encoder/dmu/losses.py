"""Symmetric InfoNCE over the global batch, with label smoothing and masked (invalid) samples.

Across processes the embeddings are all-gathered WITH gradient; each rank scores its local images
against all texts and its local texts against all images (targets offset by rank). The local loss
is scaled so that the gradient average DDP applies yields exactly the gradient of the global-batch
mean loss, i.e. a W-process run matches a 1-process run with the same global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn


def smoothed_cross_entropy(logits, targets, label_smoothing: float, column_mask):
    """Per-row CE with label smoothing: (1-eps) * NLL(target) + eps * mean over classes of -log p.

    Same value as torch's F.cross_entropy(label_smoothing=eps) when every column is valid; masked
    columns (invalid samples) are neither negatives nor part of the smoothing mean.
    """
    logp = torch.log_softmax(logits.masked_fill(~column_mask[None, :], float("-inf")).float(), dim=-1)
    nll = -logp.gather(1, targets[:, None]).squeeze(1)
    uniform = -(logp.masked_fill(~column_mask[None, :], 0.0)).sum(-1) / column_mask.sum().clamp_min(1)
    return (1.0 - label_smoothing) * nll + label_smoothing * uniform


def _world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def contrastive_loss(image_embeds, text_embeds, logit_scale, label_smoothing: float = 0.1, valid=None):
    """Returns (loss to backpropagate on this rank, global-batch mean loss for logging).

    image_embeds, text_embeds: (local_batch, dim), already L2-normalised. logit_scale: a float or a
    scalar tensor (the multiplier, e.g. 100). valid: bool (local_batch,) or None.
    """
    rank, world = _world()
    n = image_embeds.shape[0]
    if valid is None:
        valid = torch.ones(n, dtype=torch.bool, device=image_embeds.device)
    valid = valid.to(image_embeds.device).bool()
    if world > 1:
        all_images = torch.cat(dist_nn.all_gather(image_embeds))
        all_texts = torch.cat(dist_nn.all_gather(text_embeds))
        flags = valid.to(torch.uint8)  # not every backend gathers bool tensors
        gathered = [torch.empty_like(flags) for _ in range(world)]
        dist.all_gather(gathered, flags)
        all_valid = torch.cat(gathered).bool()
    else:
        all_images, all_texts, all_valid = image_embeds, text_embeds, valid
    targets = torch.arange(n, device=image_embeds.device) + rank * n
    image_to_text = logit_scale * image_embeds @ all_texts.t()
    text_to_image = logit_scale * text_embeds @ all_images.t()
    # Always masked: with every sample valid it gives the unmasked values (bitwise, checked on CPU)
    # and avoids a host sync (`bool(all_valid.all())`) in every step.
    per_row = (smoothed_cross_entropy(image_to_text, targets, label_smoothing, all_valid)
               + smoothed_cross_entropy(text_to_image, targets, label_smoothing, all_valid)) / 2
    local_sum = torch.where(valid, per_row, torch.zeros_like(per_row)).sum()
    global_valid = all_valid.sum().clamp_min(1).to(per_row.dtype)
    loss = local_sum / global_valid * world  # DDP divides gradients by `world`
    with torch.no_grad():
        logged = local_sum.detach().clone()
        if world > 1:
            dist.all_reduce(logged)
        logged = logged / global_valid
    return loss, logged

