"""Adds the CLIP-MoE load-balancing (auxiliary) loss to LLaVA's language-model loss.

Only in training mode and only when the forward computed a loss: lmms-eval and LLaVA's own
evaluation read `outputs.loss` of a model in eval mode, which must stay the plain LM loss. The
tower records the loss only while its routers or experts are trainable (it has no gradient to
give otherwise), so a frozen tower leaves the loss untouched.
"""

from __future__ import annotations

import functools

from clipmoe_encoder.tower import CLIPMoEVisionTower


def clipmoe_tower(model):
    """The CLIP-MoE tower of a LLaVA model, else None."""
    # Trainer.model is the bare model under DeepSpeed (the engine is model_wrapped), but FSDP
    # replaces it with its wrapper before create_optimizer runs.
    model = getattr(model, "module", model)
    get = getattr(model, "get_vision_tower", None)
    tower = get() if get is not None else None
    return tower if isinstance(tower, CLIPMoEVisionTower) else None


def add_aux_loss(output, aux):
    """output.loss + aux for a ModelOutput, or the first element of a tuple output."""
    if isinstance(output, tuple):
        return (output[0] + aux.to(output[0]),) + tuple(output[1:])
    output.loss = output.loss + aux.to(output.loss)
    return output


def patch_forward_aux_loss(cls) -> None:
    original = cls.forward
    if getattr(original, "_clipmoe_aux_loss", False):
        return

    @functools.wraps(original)
    def forward(self, *args, **kwargs):
        tower = clipmoe_tower(self)
        if tower is not None:
            tower.pop_aux_loss()  # forget losses of forwards whose output nobody used
        output = original(self, *args, **kwargs)
        if tower is None:
            return output
        aux = tower.pop_aux_loss()
        loss = output[0] if isinstance(output, tuple) else getattr(output, "loss", None)
        has_loss = loss is not None and (not isinstance(output, tuple) or kwargs.get("labels") is not None)
        if self.training and aux is not None and has_loss:
            output = add_aux_loss(output, aux)
        return output

    forward._clipmoe_aux_loss = True
    cls.forward = forward
