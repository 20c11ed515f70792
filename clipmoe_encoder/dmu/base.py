"""Prepare a dense base for DMU: a transformers CLIPModel directory with its tokenizer and image
processor, optionally with the text positions stretched 77 -> 248 as Long-CLIP / CLIP-MoE do."""

from __future__ import annotations

import os

from ..convert import stretch_text_positions
from ..errors import CLIPMoEError
from .models import save_model_dir


def prepare_base(source: str, out_dir: str, text_positions: int | None = None) -> str:
    """Load a dense CLIP (hub id or directory), optionally stretch its text position table to
    `text_positions` (248 = Long-CLIP's 4x stretch of 77), and save model + tokenizer + processor."""
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    if text_positions is not None and text_positions < 1:
        raise CLIPMoEError(f"--text-positions {text_positions}: must be positive")
    try:
        model = CLIPModel.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
        processor = CLIPImageProcessor.from_pretrained(source)
    except OSError as err:  # transformers: not a local folder nor a reachable hub id, or a file missing in it
        raise CLIPMoEError(f"--model {source}: cannot load a CLIP with its tokenizer and image processor "
                           f"({str(err).strip().splitlines()[0]})") from None
    if text_positions and text_positions != model.config.text_config.max_position_embeddings:
        table = model.text_model.embeddings.position_embedding.weight.detach()
        stretched = stretch_text_positions(table)
        if stretched.shape[0] != text_positions:
            raise CLIPMoEError(f"{source}: stretching {table.shape[0]} text positions gives {stretched.shape[0]}, not {text_positions} "
                               "(only Long-CLIP's 77 -> 248 is supported)")
        config = model.config
        config.text_config.max_position_embeddings = text_positions
        state = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
        state["text_model.embeddings.position_embedding.weight"] = stretched
        model = CLIPModel(config)
        model.load_state_dict(state, strict=False)
        tokenizer.model_max_length = text_positions
    os.makedirs(os.path.dirname(os.path.abspath(out_dir)), exist_ok=True)
    return save_model_dir(model, tokenizer, processor, out_dir)
