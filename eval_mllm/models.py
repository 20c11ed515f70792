"""One small interface over the two checkpoint kinds we evaluate:

* llava-torch (LLaVA-1.5 code, `LlavaLlamaForCausalLM`), loaded with LLaVA's own
  `load_pretrained_model` after `llava_integration.register()` (CLIP-MoE towers, and the
  transformers-5 compatibility shims);
* transformers Llava (`config.json` with model_type "llava"): `LlavaForConditionalGeneration`
  + `AutoProcessor`; `import clipmoe_encoder` registers a CLIP-MoE `vision_config`.

Both build the prompt with LLaVA's conversation templates and decode greedily.
`model.answer([(image or None, user_text), ...]) -> [answer text, ...]`.
"""

from __future__ import annotations

import os

import torch

from .errors import EvalInputError
from .scorers.common import read_json


def _conv_prompt(conv_mode: str, user_text: str, with_image: bool, im_start_end=False) -> str:
    """The full prompt as model_vqa_loader builds it: `<image>\\n` + text in the template
    (`<im_start><image><im_end>\\n` for checkpoints trained with mm_use_im_start_end)."""
    from llava.constants import (
        DEFAULT_IM_END_TOKEN,
        DEFAULT_IM_START_TOKEN,
        DEFAULT_IMAGE_TOKEN,
    )
    from llava.conversation import conv_templates

    if conv_mode not in conv_templates:
        raise EvalInputError(f"--conv-mode {conv_mode!r} is not one of LLaVA's templates: "
                             f"{', '.join(sorted(conv_templates))}")
    conv = conv_templates[conv_mode].copy()
    image = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN if im_start_end else DEFAULT_IMAGE_TOKEN
    conv.append_message(conv.roles[0], (image + "\n" + user_text) if with_image else user_text)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def checkpoint_kind(model_path: str) -> str:
    """"hf" for a transformers Llava checkpoint, "llava" for a llava-torch one."""
    config_path = os.path.join(model_path, "config.json")
    if not os.path.isfile(config_path):
        raise EvalInputError(f"{model_path}: no config.json (not a model checkpoint directory)")
    config = read_json(config_path)  # not JSON: one error line naming the file and line
    if not isinstance(config, dict):
        raise EvalInputError(f"{config_path}: expected a JSON object (a model config)")
    return "hf" if config.get("model_type") == "llava" else "llava"


def _default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


class _Base:
    conv_mode = "vicuna_v1"
    max_new_tokens = 128
    min_new_tokens = 0
    model_id = ""

    def _gen_kwargs(self):
        # Greedy as LLaVA's scripts with --temperature 0.
        kw = {"do_sample": False, "num_beams": 1, "max_new_tokens": self.max_new_tokens, "use_cache": True}
        if self.min_new_tokens:
            kw["min_new_tokens"] = self.min_new_tokens
        return kw

    def prompt(self, user_text: str, with_image: bool) -> str:
        return _conv_prompt(self.conv_mode, user_text, with_image)


class LlavaTorchModel(_Base):
    """A llava-torch checkpoint (LLaVA-1.5 layout, any vision tower incl. `clipmoe:`)."""

    def __init__(self, model_path, model_base=None, conv_mode="vicuna_v1", max_new_tokens=128,
                 min_new_tokens=0, device=None):
        from llava.mm_utils import get_model_name_from_path
        from llava.model.builder import load_pretrained_model

        import llava_integration

        llava_integration.register()
        self.conv_mode, self.max_new_tokens, self.min_new_tokens = conv_mode, max_new_tokens, min_new_tokens
        self.device = device or _default_device()
        path = os.path.expanduser(model_path)
        self.model_id = get_model_name_from_path(path)
        # LLaVA's builder only takes its LLaVA branch when 'llava' is in the name; a checkpoint
        # directory named otherwise would silently load as a bare LLM, so make the name fit.
        name = self.model_id if "llava" in self.model_id.lower() else "llava-" + self.model_id
        if self.device == "cpu":
            tokenizer, model, processor, _ = load_pretrained_model(path, model_base, name, device="cpu",
                                                                   device_map="cpu")
            model = model.float()  # LLaVA loads fp16; fp32 on CPU (fp16 matmuls are slow and less exact)
        else:
            tokenizer, model, processor, _ = load_pretrained_model(path, model_base, name, device=self.device)
        self.tokenizer, self.model, self.image_processor = tokenizer, model.eval(), processor
        # Batched generation needs left padding: LLaVA re-pads the spliced embeddings on this side.
        self.model.config.tokenizer_padding_side = "left"
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.unk_token_id or 0)

    def prompt(self, user_text: str, with_image: bool) -> str:
        return _conv_prompt(self.conv_mode, user_text, with_image,
                            getattr(self.model.config, "mm_use_im_start_end", False))

    @torch.inference_mode()
    def answer(self, batch):
        from llava.constants import IMAGE_TOKEN_INDEX
        from llava.mm_utils import process_images, tokenizer_image_token

        with_image = [image is not None for image, _ in batch]
        if any(with_image) and not all(with_image):
            # LLaVA's generate takes images for all rows or none: split mixed batches.
            return [self.answer([item])[0] for item in batch]
        ids = [tokenizer_image_token(self.prompt(text, image is not None), self.tokenizer, IMAGE_TOKEN_INDEX,
                                     return_tensors="pt") for image, text in batch]
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, x in enumerate(ids):  # left padding
            input_ids[row, width - len(x):] = x
            attention_mask[row, width - len(x):] = 1
        kwargs = {}
        if all(with_image):
            images = [image for image, _ in batch]
            tensor = process_images(images, self.image_processor, self.model.config)
            kwargs = {"images": tensor.to(self.model.device, dtype=self.model.dtype),
                      "image_sizes": [image.size for image in images]}
        out = self.model.generate(input_ids.to(self.model.device), attention_mask=attention_mask.to(self.model.device),
                                  pad_token_id=self.pad_id, **kwargs, **self._gen_kwargs())
        # With inputs_embeds (always, in LLaVA's generate) the output holds only new tokens.
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]


class HFLlavaModel(_Base):
    """A transformers `LlavaForConditionalGeneration` checkpoint (vision tower may be CLIP-MoE)."""

    def __init__(self, model_path, conv_mode="vicuna_v1", max_new_tokens=128, min_new_tokens=0, device=None):
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        import clipmoe_encoder  # noqa: F401  registers clipmoe_vision_model with AutoConfig/AutoModel

        self.conv_mode, self.max_new_tokens, self.min_new_tokens = conv_mode, max_new_tokens, min_new_tokens
        self.device = device or _default_device()
        path = os.path.expanduser(model_path)
        self.model_id = os.path.basename(path.rstrip("/"))
        dtype = torch.float32 if self.device == "cpu" else torch.float16
        self.model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype).to(self.device).eval()
        self.processor = AutoProcessor.from_pretrained(path)
        self.processor.tokenizer.padding_side = "left"  # batched generation
        tok = self.processor.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.unk_token_id or 0)
        if tok.pad_token is None:
            tok.pad_token = tok.unk_token

    @torch.inference_mode()
    def answer(self, batch):
        with_image = [image is not None for image, _ in batch]
        if any(with_image) and not all(with_image):
            return [self.answer([item])[0] for item in batch]
        prompts = [self.prompt(text, image is not None) for image, text in batch]
        images = [image for image, _ in batch] if all(with_image) else None
        inputs = self.processor(images=images, text=prompts, padding=True, return_tensors="pt").to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        out = self.model.generate(**inputs, pad_token_id=self.pad_id, **self._gen_kwargs())
        new = out[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in self.processor.tokenizer.batch_decode(new, skip_special_tokens=True)]


def load_model(model_path, model_base=None, conv_mode="vicuna_v1", max_new_tokens=128, min_new_tokens=0,
               device=None):
    """The right wrapper for the checkpoint in `model_path`."""
    if checkpoint_kind(os.path.expanduser(model_path)) == "hf":
        if model_base:
            raise EvalInputError("--model-base is for llava-torch LoRA/projector checkpoints only")
        return HFLlavaModel(model_path, conv_mode, max_new_tokens, min_new_tokens, device)
    return LlavaTorchModel(model_path, model_base, conv_mode, max_new_tokens, min_new_tokens, device)
