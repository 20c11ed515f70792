"""The CLIP-MoE auxiliary (load-balancing) loss added to a LLaVA's language-model loss.

One mechanism for both LLaVAs (LLaVA-1.5's `LlavaLlamaForCausalLM`, transformers'
`LlavaForConditionalGeneration`): while one forward of the LLaVA runs, forward hooks on every
CLIP-MoE vision model inside it ask that model for its router logits and keep the aux loss it
computes itself (its config holds the coefficient and the balance rule, so nothing is recomputed
here). The loss is added only in training mode, only when the forward computed a loss and only
while routers or experts are trainable: lmms-eval and LLaVA's evaluation read `outputs.loss` of a
model in eval mode, which must stay the plain LM loss, and a frozen tower has no gradient to take.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from clipmoe_encoder.modeling import CLIPMoEVisionModel


def moe_vision_models(model) -> list[CLIPMoEVisionModel]:
    """The CLIP-MoE vision models inside a LLaVA (whatever wraps them: LLaVA's tower, Llava's
    `vision_tower` attribute, DeepSpeed or FSDP wrappers)."""
    return [m for m in model.modules() if isinstance(m, CLIPMoEVisionModel)]


def has_trainable_moe(model) -> bool:
    return any(p.requires_grad for m in moe_vision_models(model) for p in m.parameters())


class AuxLossCollector:
    """The aux losses of the CLIP-MoE forwards seen while collecting (one per tower call: LLaVA-1.5
    runs a list of images one by one)."""

    def __init__(self):
        self.losses: list[torch.Tensor] = []

    def ask_for_router_logits(self, module, args, kwargs):
        kwargs["output_router_logits"] = True
        return args, kwargs

    def keep_aux_loss(self, module, args, kwargs, output):
        aux = getattr(output, "aux_loss", None)
        if aux is not None:
            self.losses.append(aux)

    def mean(self) -> torch.Tensor | None:
        """Mean over the tower calls (None if there was none)."""
        if not self.losses:
            return None
        return torch.stack([loss.float() for loss in self.losses]).mean()


@contextlib.contextmanager
def collect_aux_losses(model):
    """Collect the aux losses of the CLIP-MoE vision models inside `model` during the block; the
    hooks are removed on exit, also after an error."""
    collector = AuxLossCollector()
    handles = []
    try:
        for vision in moe_vision_models(model):
            handles.append(vision.register_forward_pre_hook(collector.ask_for_router_logits, with_kwargs=True))
            handles.append(vision.register_forward_hook(collector.keep_aux_loss, with_kwargs=True))
        yield collector
    finally:
        for handle in handles:
            handle.remove()


def add_to_loss(output, aux: torch.Tensor):
    """output.loss + aux for a ModelOutput, or the first element (the loss) of a tuple output."""
    if isinstance(output, tuple):
        return (output[0] + aux.to(output[0]),) + tuple(output[1:])
    output.loss = output.loss + aux.to(output.loss)
    return output


def _loss_of(output, labels_given: bool):
    if isinstance(output, tuple):  # return_dict=False: the loss is first only when labels were given
        return output[0] if labels_given and output else None
    return getattr(output, "loss", None)


def with_moe_aux_loss(forward):
    """Wrap a LLaVA `forward` so that in training it returns LM loss + the CLIP-MoE aux loss.

    `functools.wraps` keeps the wrapped signature visible to `inspect.signature` (generate() checks
    its keywords against it). Idempotent."""
    if getattr(forward, "_clipmoe_aux_loss", False):
        return forward

    @functools.wraps(forward)
    def forward_with_aux_loss(self, *args, **kwargs):
        if not (self.training and has_trainable_moe(self)):
            return forward(self, *args, **kwargs)
        with collect_aux_losses(self) as collector:
            output = forward(self, *args, **kwargs)
        loss = _loss_of(output, kwargs.get("labels") is not None)
        aux = collector.mean()
        if loss is None or aux is None:
            return output
        return add_to_loss(output, aux)

    forward_with_aux_loss._clipmoe_aux_loss = True
    return forward_with_aux_loss
