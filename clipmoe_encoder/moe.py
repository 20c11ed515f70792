"""Sparse mixture-of-experts FFN: router, stacked experts, dispatch, auxiliary losses.

Three separate pieces (as in MegaBlocks): `TopKRouter` picks experts per token, `StackedExperts`
holds every expert's FFN as one 3-D tensor per weight and runs contiguous token slices through
them, and `MoEFeedForward` sorts (token, expert) pairs by expert, calls the experts once and
combines the results. The dispatch is dropless (no capacity, no token dropped) and makes no
copy of the tokens per expert: the tokens are gathered once, in expert order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from .configuration import AUX_LOSS_COUNTS
from .grouped_mm import HAS_GROUPED_MM, grouped_mm_runs_on_device, matmul_dtype


def activation(name: str):
    """transformers' activation of that name (what its CLIPMLP uses), with one clear error."""
    if name not in ACT2FN:
        raise ValueError(f"hidden_act {name!r} is not one of transformers' activations (CLIP uses 'quick_gelu' or 'gelu')")
    return ACT2FN[name]


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

    # None = grouped matmul where torch's CUDA kernel takes the inputs; True/False forces a path.
    prefer_grouped_mm: bool | None = None

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int, hidden_act: str, dropout: float = 0.0):
        super().__init__()
        self.hidden_size, self.intermediate_size = hidden_size, intermediate_size
        self.fc1_weight = nn.Parameter(torch.empty(num_experts, intermediate_size, hidden_size))
        self.fc1_bias = nn.Parameter(torch.empty(num_experts, intermediate_size))
        self.fc2_weight = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))
        self.fc2_bias = nn.Parameter(torch.empty(num_experts, hidden_size))
        self.hidden_act = hidden_act
        self.act = activation(hidden_act)
        self.dropout = dropout

    def forward(self, x_sorted: torch.Tensor, expert_ids_sorted: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        """Rows of `x_sorted` are grouped by expert: expert e owns rows ends[e-1]:ends[e] (int32).

        Two dropless paths with the same results. Grouped: every expert in one `F.grouped_mm` per
        weight, the group boundaries read on the device (no host-device sync); taken on CUDA where
        torch's kernel accepts the inputs (`grouped_mm_runs_on_device`: bf16 on SM >= 80, fp16
        where torch reports cuBLASLt grouped GEMM). Looped: one matmul per expert over its
        contiguous rows; it reads the group sizes on the host once per MoE layer, so on CUDA (fp32,
        fp16 without cuBLASLt grouped GEMM, GPUs before SM 80) it syncs once per layer (the
        official code reads them once per expert per layer). Under autocast the matmuls run in
        autocast's dtype on both paths.
        """
        dtype = matmul_dtype(x_sorted)
        if self._use_grouped_mm(x_sorted, ends, dtype):
            return self._grouped(x_sorted, expert_ids_sorted, ends, dtype)
        return self._looped(x_sorted, ends, dtype)

    def _use_grouped_mm(self, x: torch.Tensor, ends: torch.Tensor, dtype: torch.dtype) -> bool:
        if self.prefer_grouped_mm is not None:  # forced (tests run both paths on CPU)
            return self.prefer_grouped_mm and HAS_GROUPED_MM
        # On CPU torch's grouped_mm is itself a loop (and no faster than ours, measured), and
        # reading the group sizes on the host costs nothing there.
        return grouped_mm_runs_on_device(x, self.fc1_weight, self.fc2_weight, offs=ends, dtype=dtype)

    def _grouped(self, x, expert_ids, ends, dtype):
        # Autocast does not cast grouped_mm's inputs: cast them (and the biases) explicitly.
        w1, b1, w2, b2 = (p.to(dtype) for p in (self.fc1_weight, self.fc1_bias, self.fc2_weight, self.fc2_bias))
        h = F.grouped_mm(x.to(dtype), w1.transpose(1, 2), offs=ends) + b1[expert_ids]
        h = F.dropout(self.act(h), self.dropout, self.training)
        return F.grouped_mm(h, w2.transpose(1, 2), offs=ends) + b2[expert_ids]

    def _looped(self, x, ends, dtype):
        # The one host read of this layer. No expert is skipped when empty (a 0-row matmul is
        # fine) and the output keeps its static size, so the loop also runs on symbolic sizes.
        bounds = [0] + ends.tolist()
        rows = [slice(bounds[e], bounds[e + 1]) for e in range(len(bounds) - 1)]
        out = x.new_empty(x.shape[0], self.hidden_size, dtype=dtype)
        if x.device.type == "cpu" and not torch.is_grad_enabled() and self.hidden_act == "quick_gelu" and dtype == x.dtype:
            return self._looped_inference(x, rows, out)
        for e, r in enumerate(rows):
            h = F.dropout(self.act(F.linear(x[r], self.fc1_weight[e], self.fc1_bias[e])), self.dropout, self.training)
            out[r] = F.linear(h, self.fc2_weight[e], self.fc2_bias[e])
        return out

    def _looped_inference(self, x, rows, out):
        # Without autograd the CPU path can write in place: quick_gelu(z) = silu(1.702 z) / 1.702,
        # so fc1 is computed pre-scaled by 1.702 (addmm's alpha/beta), silu runs in place, and fc2
        # divides by 1.702 through its alpha, writing straight into the output: one pass over the
        # hidden activations instead of three, and no concatenation.
        for e, r in enumerate(rows):
            h = torch.addmm(self.fc1_bias[e], x[r], self.fc1_weight[e].t(), beta=1.702, alpha=1.702)
            F.silu(h, inplace=True)
            torch.addmm(self.fc2_bias[e], h, self.fc2_weight[e].t(), alpha=1 / 1.702, out=out[r])
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
        if y.device.type == "cpu":  # on CPU index_add_ is deterministic and reads the pairs once
            return y.new_zeros(x.shape).index_add_(0, token, y).view(shape), logits
        # On accelerators index_add_ uses atomics (nondeterministic): put the pairs back in (token, slot)
        # order with the inverse permutation and sum over the k slots instead.
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        return y[inverse].view(x.shape[0], self.top_k, -1).sum(dim=1).view(shape), logits


@dataclass
class RoutingStats:
    """What one MoE layer's router did on a batch, as sums over the real tokens (padding excluded),
    so that statistics of several batches or processes add up. Computed once per layer and forward;
    the balance and z losses, the DMU global-batch loss and the routing logs all read it.

    tokens: () number of real tokens. choices: (k, E) how many tokens have expert e as their j-th
    choice (no gradient). prob_sums: (E,) summed router probabilities. z_sums: () summed
    logsumexp(logits)^2. entropy_sums: () summed router entropy in nats (no gradient).
    """

    tokens: torch.Tensor
    choices: torch.Tensor
    prob_sums: torch.Tensor
    z_sums: torch.Tensor
    entropy_sums: torch.Tensor

    @property
    def num_experts(self) -> int:
        return self.choices.shape[-1]

    def expert_fractions(self, count: str) -> torch.Tensor:
        """f_j of the balance loss: "top_k" counts every top-k choice (sums to k), "top1" the first only."""
        if count not in AUX_LOSS_COUNTS:
            raise ValueError(f"router_aux_loss_count must be one of {AUX_LOSS_COUNTS}, got {count!r}")
        counted = self.choices.sum(0) if count == "top_k" else self.choices[0]
        return counted / self.tokens.clamp_min(1.0)

    def mean_probs(self) -> torch.Tensor:
        return self.prob_sums / self.tokens.clamp_min(1.0)



def routing_stats(router_logits: torch.Tensor, top_k: int, token_mask: torch.Tensor | None = None) -> RoutingStats:
    """Statistics of one layer from its router logits (tokens, E); token_mask: 1 = real token."""
    logits = router_logits.float()
    if token_mask is None:
        w = logits.new_ones(logits.shape[0])
    else:
        w = token_mask.reshape(-1).to(device=logits.device, dtype=torch.float32)
    probs = torch.softmax(logits, dim=-1)
    with torch.no_grad():
        chosen = F.one_hot(probs.topk(top_k, dim=-1).indices, logits.shape[-1]).to(torch.float32)  # (T, k, E)
        choices = (chosen * w[:, None, None]).sum(0)
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
        entropy_sums = (entropy * w).sum()
    z = torch.logsumexp(logits, dim=-1) ** 2
    return RoutingStats(w.sum(), choices, (probs * w[:, None]).sum(0), (z * w).sum(), entropy_sums)


def load_balancing_loss(stats: RoutingStats, count: str = "top1") -> torch.Tensor:
    """Balance loss of one MoE layer: E * sum_j f_j * P_j, P_j the mean router probability of expert j.

    count="top1" (Switch Transformer, the paper's eq. 7-8): f_j is the fraction of tokens whose first
    choice is j; the value at perfect balance (uniform routing) is 1.
    count="top_k" (the official CLIP-MoE code, HF Mixtral's function): f_j counts every top-k choice,
    so sum_j f_j = k and the value at perfect balance is k.
    """
    return stats.num_experts * (stats.expert_fractions(count) * stats.mean_probs()).sum()


def router_z_loss(stats: RoutingStats) -> torch.Tensor:
    """ST-MoE z-loss of one layer: mean over real tokens of logsumexp(logits)^2."""
    return stats.z_sums / stats.tokens.clamp_min(1.0)


def aux_losses(stats: list[RoutingStats] | tuple[RoutingStats, ...], config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(aux, balance, z) of several MoE layers: balance and z averaged over the layers (the paper's
    1/(A+B) sum), aux = config.router_aux_loss_coef * balance + config.router_z_loss_coef * z, with
    the balance count of config.router_aux_loss_count. Zeros when there is no MoE layer."""
    if not stats:
        zero = torch.zeros((), dtype=torch.float32)
        return zero, zero, zero
    device = stats[0].prob_sums.device
    count = getattr(config, "router_aux_loss_count", "top1")
    balance = torch.stack([load_balancing_loss(s, count).to(device) for s in stats]).mean()
    z = torch.stack([router_z_loss(s).to(device) for s in stats]).mean()
    return config.router_aux_loss_coef * balance + config.router_z_loss_coef * z, balance, z


def summed_over_processes(stats: list[RoutingStats]) -> list[RoutingStats]:
    """The statistics of the global batch: every field summed over the processes in one collective,
    differentiably (the backward sums the gradients back to every rank), so a W-process balance loss
    is exactly the 1-process one on the same global batch. Unchanged without torch.distributed."""
    import torch.distributed as dist

    if not stats or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(stats)
    import torch.distributed.nn.functional as dist_nn

    fields = ("tokens", "choices", "prob_sums", "z_sums", "entropy_sums")
    parts = [getattr(s, f).float().reshape(-1) for s in stats for f in fields]
    total = dist_nn.all_reduce(torch.cat(parts))
    out, start = [], 0
    for s in stats:
        values = {}
        for f in fields:
            shape = getattr(s, f).shape
            values[f] = total[start:start + shape.numel()].view(shape)
            start += shape.numel()
        out.append(RoutingStats(**values))
    return out


# What trains is decided by module type, never by parameter-name substrings: a renamed or added
# submodule (a shared expert next to the routed ones) then cannot silently join or leave a group.
def named_router_parameters(module: nn.Module, prefix: str = ""):
    """(name, parameter) of every `TopKRouter` inside `module`, names as module.named_parameters gives."""
    return _named_parameters_of(module, TopKRouter, prefix)


def named_expert_parameters(module: nn.Module, prefix: str = ""):
    """(name, parameter) of every `StackedExperts` inside `module`."""
    return _named_parameters_of(module, StackedExperts, prefix)


def router_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for _, p in named_router_parameters(module)]


def expert_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for _, p in named_expert_parameters(module)]


def _named_parameters_of(module, kind, prefix):
    found = []
    for name, sub in module.named_modules(prefix=prefix.rstrip(".")):
        if isinstance(sub, kind):
            found.extend(sub.named_parameters(prefix=name, recurse=False))
    return found
