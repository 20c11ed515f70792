"""Sparse mixture-of-experts FFN: router, stacked experts, dispatch, auxiliary losses.

Three separate pieces (as in MegaBlocks): `TopKRouter` picks experts per token, `StackedExperts`
holds every expert's FFN as one 3-D tensor per weight and runs contiguous token slices through
them, and `MoEFeedForward` sorts (token, expert) pairs by expert, calls the experts once and
combines the results. The dispatch is dropless (no capacity, no token dropped) and makes no
copy of the tokens per expert: the tokens are gathered once, in expert order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# torch >= 2.10 has a public grouped matmul; on CUDA it runs every expert in one kernel with
# the group boundaries read on the device, so the forward never waits for the host.
_HAS_GROUPED_MM = hasattr(F, "grouped_mm")


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def activation_fn(name: str):
    """The FFN activations CLIP checkpoints use."""
    if name == "quick_gelu":
        return quick_gelu
    if name in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
        approximate = "none" if name == "gelu" else "tanh"
        return lambda x: F.gelu(x, approximate=approximate)
    raise ValueError(f"hidden_act {name!r} is not supported (expected 'quick_gelu' or 'gelu')")


class TopKRouter(nn.Module):
    """Bias-free linear gate; softmax over all experts in fp32, then top-k (optionally renormalised).

    Softmax-then-top-k with renormalisation is the paper's rule (identical to Mixtral's); without
    renormalisation the kept weights sum to less than one, as in Switch/V-MoE.
    """

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, renormalize: bool = True, jitter: float = 0.0):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be between 1 and num_experts={num_experts}, got {top_k}")
        self.num_experts, self.top_k, self.renormalize, self.jitter = num_experts, top_k, renormalize, jitter
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size))

    def forward(self, x: torch.Tensor):
        """x: (tokens, hidden) -> (logits (tokens, E), weights (tokens, k) in x.dtype, experts (tokens, k))."""
        if self.training and self.jitter > 0:
            # Switch-style multiplicative jitter on the router input only.
            x = x * torch.empty_like(x).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
        logits = F.linear(x, self.weight)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        weights, experts = probs.topk(self.top_k, dim=-1)
        if self.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits, weights.to(x.dtype), experts


class StackedExperts(nn.Module):
    """E copies of the CLIP FFN (fc1 -> act -> dropout -> fc2) stored as stacked (E, out, in) weights."""

    # None = grouped matmul on CUDA only; True/False forces a path (tests run both on CPU).
    prefer_grouped_mm: bool | None = None

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int, hidden_act: str, dropout: float = 0.0):
        super().__init__()
        self.hidden_size, self.intermediate_size = hidden_size, intermediate_size
        self.fc1_weight = nn.Parameter(torch.empty(num_experts, intermediate_size, hidden_size))
        self.fc1_bias = nn.Parameter(torch.empty(num_experts, intermediate_size))
        self.fc2_weight = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))
        self.fc2_bias = nn.Parameter(torch.empty(num_experts, hidden_size))
        self.act = activation_fn(hidden_act)
        self.dropout = dropout

    def forward(self, x_sorted: torch.Tensor, expert_ids_sorted: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        """Rows of `x_sorted` are grouped by expert: expert e owns rows ends[e-1]:ends[e] (int32)."""
        if self._use_grouped_mm(x_sorted):
            return self._grouped(x_sorted, expert_ids_sorted, ends)
        return self._looped(x_sorted, ends)

    def _use_grouped_mm(self, x: torch.Tensor) -> bool:
        # On CPU torch's grouped_mm is itself a loop (and no faster than ours, measured); the loop
        # below reads the group sizes on the host, which costs nothing there. grouped_mm also
        # needs 16-byte aligned rows.
        aligned = all(n * x.element_size() % 16 == 0 for n in self.fc1_weight.shape[1:])
        wanted = x.is_cuda if self.prefer_grouped_mm is None else self.prefer_grouped_mm
        return _HAS_GROUPED_MM and wanted and aligned

    def _grouped(self, x, expert_ids, ends):
        h = F.grouped_mm(x, self.fc1_weight.transpose(1, 2), offs=ends) + self.fc1_bias[expert_ids]
        h = F.dropout(self.act(h), self.dropout, self.training)
        return F.grouped_mm(h, self.fc2_weight.transpose(1, 2), offs=ends) + self.fc2_bias[expert_ids]

    def _looped(self, x, ends):
        sizes = ends.diff(prepend=ends.new_zeros(1)).tolist()
        if not torch.is_grad_enabled() and self.act is quick_gelu:
            return self._looped_inference(x, sizes)
        outputs = []
        for e, chunk in enumerate(x.split(sizes)):
            if chunk.shape[0] == 0:
                continue
            h = F.dropout(self.act(F.linear(chunk, self.fc1_weight[e], self.fc1_bias[e])), self.dropout, self.training)
            outputs.append(F.linear(h, self.fc2_weight[e], self.fc2_bias[e]))
        return torch.cat(outputs) if outputs else x.new_zeros(0, self.hidden_size)

    def _looped_inference(self, x, sizes):
        # Without autograd the CPU path can write in place: quick_gelu(z) = silu(1.702 z) / 1.702,
        # so fc1 is computed pre-scaled by 1.702 (addmm's alpha/beta), silu runs in place, and fc2
        # divides by 1.702 through its alpha, writing straight into the output: one pass over the
        # hidden activations instead of three, and no concatenation.
        out = x.new_empty(x.shape[0], self.hidden_size)
        start = 0
        for e, n in enumerate(sizes):
            if n == 0:
                continue
            rows = slice(start, start + n)
            h = torch.addmm(self.fc1_bias[e], x[rows], self.fc1_weight[e].t(), beta=1.702, alpha=1.702)
            F.silu(h, inplace=True)
            torch.addmm(self.fc2_bias[e], h, self.fc2_weight[e].t(), alpha=1 / 1.702, out=out[rows])
            start += n
        return out


class MoEFeedForward(nn.Module):
    """Drop-in replacement of CLIP's FFN: returns (output, router_logits)."""

    def __init__(self, config):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.router = TopKRouter(
            config.hidden_size, config.num_experts, config.num_experts_per_tok, config.normalize_top_k, config.router_jitter
        )
        self.experts = StackedExperts(
            config.num_experts, config.hidden_size, config.intermediate_size, config.hidden_act, config.expert_dropout
        )

    def forward(self, hidden_states: torch.Tensor):
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        logits, weights, experts = self.router(x)

        # Sort the (token, slot) pairs by expert: every expert then reads one contiguous slice.
        flat_experts = experts.reshape(-1)
        order = flat_experts.argsort(stable=True)
        sorted_experts = flat_experts[order]
        # Group boundaries by binary search over the sorted ids: unlike bincount, which reads the
        # ids' min and max back to the host on CUDA, this stays on the device.
        boundaries = torch.arange(1, self.router.num_experts + 1, device=x.device, dtype=sorted_experts.dtype)
        ends = torch.searchsorted(sorted_experts, boundaries, out_int32=True)
        token = order // self.top_k
        y = self.experts(x[token], sorted_experts, ends)

        pair_weights = weights.reshape(-1)[order].unsqueeze(-1)
        y = y.mul_(pair_weights) if not torch.is_grad_enabled() else y * pair_weights
        if not y.is_cuda:  # on CPU index_add_ is deterministic and reads the pairs once
            return x.new_zeros(x.shape).index_add_(0, token, y).view(shape), logits
        # On CUDA index_add_ uses atomics (nondeterministic): put the pairs back in (token, slot)
        # order with the inverse permutation and sum over the k slots instead.
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        return y[inverse].view(x.shape[0], self.top_k, -1).sum(dim=1).view(shape), logits


def _token_weights(router_logits: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    if token_mask is None:
        return router_logits.new_ones(router_logits.shape[0], dtype=torch.float32)
    return token_mask.reshape(-1).to(torch.float32)


def load_balancing_loss(router_logits: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Switch Transformer balance loss of one MoE layer: E * sum_j f_j * P_j over real tokens.

    f_j is the fraction of tokens whose top-1 expert is j and P_j the mean router probability of
    expert j (the paper's eq. 7-8); it equals 1 when routing is uniform. Masked tokens (text
    padding) count in neither.
    """
    num_experts = router_logits.shape[-1]
    w = _token_weights(router_logits, token_mask)
    denom = w.sum().clamp_min(1.0)
    probs = torch.softmax(router_logits.float(), dim=-1)
    top1 = F.one_hot(probs.argmax(dim=-1), num_experts).to(torch.float32)
    f = (top1 * w[:, None]).sum(0) / denom
    p = (probs * w[:, None]).sum(0) / denom
    return num_experts * (f * p).sum()


def router_z_loss(router_logits: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """ST-MoE z-loss of one layer: mean over real tokens of logsumexp(logits)^2."""
    w = _token_weights(router_logits, token_mask)
    z = torch.logsumexp(router_logits.float(), dim=-1) ** 2
    return (z * w).sum() / w.sum().clamp_min(1.0)
