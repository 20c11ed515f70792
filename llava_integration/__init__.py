"""CLIP-MoE for LLaVA-1.5 (PyPI `llava-torch`) and transformers' Llava.

The one line a user adds before building or loading a LLaVA model:

    import llava_integration; llava_integration.register()

After it, `--vision_tower clipmoe` (default checkpoint from $CLIPMOE_VISION_TOWER),
`--vision_tower clipmoe:<path or hub id>` and any CLIP-MoE checkpoint directory work wherever
LLaVA builds a vision tower; every other name still goes to LLaVA's own builder.
"""

from __future__ import annotations

from clipmoe_encoder.tower import DEFAULT_TOWER_ENV, CLIPMoEVisionTower

_registered = False


def register() -> None:
    """Patch LLaVA (idempotent): builder dispatch, config persistence, aux loss, compatibility."""
    global _registered
    if _registered:
        return
    from . import aux_loss, builder, compat

    compat.apply()
    builder.patch_builders()
    for cls in compat.llava_causal_lm_classes():
        aux_loss.patch_forward_aux_loss(cls)
    _registered = True


__all__ = ["DEFAULT_TOWER_ENV", "CLIPMoEVisionTower", "register"]
