"""A tiny, seeded LLaVA world built by code (no download): for the tests, CI and the demo.

`build_world(root)` writes
  root/llm/            tiny Llama (LlamaForCausalLM) + its sentencepiece tokenizer
  root/clipmoe-tower/  tiny CLIP-MoE vision tower + CLIPImageProcessor
  root/images/         a handful of coloured-shape PNGs (some not square, for LLaVA's 'pad')
  root/pretrain.json   stage-1 data (LCS-558K format: <image> + caption)
  root/finetune.json   stage-2 data (mix665k format: multi-turn, one text-only sample)

The tokenizer is a sentencepiece BPE with byte_fallback trained on text that contains the
vicuna_v1 template: a tokenizer that emits <unk> makes LLaVA's v1 preprocessing report a
"tokenization mismatch" and mask every label (loss 0).

    python -m clipmoe_demo.tiny_llava OUT_DIR      # prints the paths as shell variables
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
from dataclasses import dataclass

import torch

COLOURS = {
    "red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40),
    "purple": (140, 50, 170), "orange": (240, 140, 20), "black": (15, 15, 15), "white": (245, 245, 245),
}
SHAPES = ("square", "circle")
SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
QUESTIONS = ("What colour is the {shape}?", "Describe the image briefly.", "What shape do you see?")

TOWER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
         "image_size": 32, "patch_size": 8, "num_experts": 4, "num_experts_per_tok": 2, "moe_layers": "all",
         "projection_dim": 32}
LLM = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
       "num_key_value_heads": 4, "max_position_embeddings": 512}


@dataclass
class TinyWorld:
    root: str
    llm: str
    tower: str
    images: str
    pretrain_json: str
    finetune_json: str

    def as_shell(self) -> str:
        names = {"TINY_ROOT": self.root, "TINY_LLM": self.llm, "TINY_TOWER": self.tower, "TINY_IMAGES": self.images,
                 "TINY_PRETRAIN_JSON": self.pretrain_json, "TINY_FINETUNE_JSON": self.finetune_json}
        return "\n".join(f"{k}={v}" for k, v in names.items())


def _samples(seed=0):
    rng = random.Random(seed)
    out = []
    for i, (colour, shape) in enumerate((c, s) for c in COLOURS for s in SHAPES):
        w, h = rng.choice([(40, 40), (48, 32), (32, 44)])
        out.append({"id": f"tiny-{i}", "colour": colour, "shape": shape, "size": (w, h),
                    "file": f"{colour}_{shape}.png"})
    return out[:12]


def _draw(sample, path):
    from PIL import Image, ImageDraw

    w, h = sample["size"]
    image = Image.new("RGB", (w, h), (128, 128, 128))
    box = (w // 5, h // 5, w - w // 5, h - h // 5)
    draw = ImageDraw.Draw(image)
    (draw.rectangle if sample["shape"] == "square" else draw.ellipse)(box, fill=COLOURS[sample["colour"]])
    image.save(path)


def _conversations(samples):
    pretrain, finetune = [], []
    for k, s in enumerate(samples):
        caption = f"a {s['colour']} {s['shape']} on a grey background"
        pretrain.append({"id": s["id"], "image": s["file"], "conversations": [
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": caption}]})
        turns = [{"from": "human", "value": "<image>\n" + QUESTIONS[k % 3].format(shape=s["shape"])},
                 {"from": "gpt", "value": f"The {s['shape']} is {s['colour']}." if k % 3 == 0 else f"I see {caption}."}]
        if k % 2:
            turns += [{"from": "human", "value": "Is the background grey?"}, {"from": "gpt", "value": "Yes, it is grey."}]
        finetune.append({"id": s["id"], "image": s["file"], "conversations": turns})
    finetune.append({"id": "text-only", "conversations": [
        {"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Blue is a colour."}]})
    return pretrain, finetune


def conversation_corpus(pretrain, finetune, joined=False):
    """Tokenizer training text for LLaVA-format records: every conversation laid out as the
    vicuna_v1 template lays it out (system prompt, USER:/ASSISTANT: roles), in both cases.

    joined: instead, each conversation as the template joins it, every USER glued to a "</s>"
    before it. LLaVA's v1 label masking counts a later round as if tokenized alone, minus one
    token: that holds only if "USER" alone is "▁" + the pieces of "USER" after "</s>", i.e. if
    no piece starts with "▁U". With a space before USER in the corpus BPE learns "▁USER", every
    later round is off by one: "tokenization mismatch", all labels of the sample masked."""
    lines = [SYSTEM]
    for record in pretrain + finetune:
        if joined:
            text = SYSTEM
            for turn in record["conversations"]:
                value = turn["value"].replace("<image>", "").strip()
                text += ("</s>USER: " if turn["from"] == "human" else " ASSISTANT: ") + value
            lines.append(text + "</s>")
            continue
        text = SYSTEM + " "
        for turn in record["conversations"]:
            role = "USER" if turn["from"] == "human" else "ASSISTANT"
            text += f"{role}: {turn['value'].replace('<image>', '').strip()} "
        lines += [text, text.lower()]
    return lines


def _corpus(pretrain, finetune):
    lines = conversation_corpus(pretrain, finetune)
    lines += [f"{c} {s}" for c in COLOURS for s in SHAPES]
    return lines * 4


@contextlib.contextmanager
def _protobuf_gencode_check_off():
    """sentencepiece 0.2.3 ships a model schema generated by protobuf 7.36; reading tokenizer.model
    under an older protobuf runtime (6.33 is installed next to lmms-eval) fails the gencode version
    check although the schema is unchanged. The check is skipped while the tokenizer is converted;
    the saved tokenizer.json then loads without protobuf."""
    key = "TEMPORARILY_DISABLE_PROTOBUF_VERSION_CHECK"
    old = os.environ.get(key)
    os.environ[key] = "true"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def build_tokenizer(directory, corpus, vocab_size=400):
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    os.makedirs(directory, exist_ok=True)
    prefix = os.path.join(directory, "tokenizer")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_prefix=prefix, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        hard_vocab_limit=False, normalization_rule_name="identity", num_threads=1, minloglevel=2,
    )
    os.remove(prefix + ".vocab")
    # Never LlamaTokenizer(vocab_file=...): on transformers 5 that silently yields 3 tokens.
    with _protobuf_gencode_check_off():
        # add_bos_token as in Vicuna's tokenizer_config.json (transformers 5 defaults to False)
        tokenizer = LlamaTokenizer.from_pretrained(directory, add_bos_token=True)
    tokenizer.save_pretrained(directory)
    return tokenizer


def build_llm(directory, vocab_size, seed=0, **overrides):
    """A randomly initialised Llama of the LLM sizes (overrides: any LlamaConfig field)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=None, **{**LLM, **overrides})
    LlamaForCausalLM(config).save_pretrained(directory)


def build_tower(directory, seed=0, **overrides):
    from clipmoe_encoder import CLIPMoEVisionConfig, CLIPMoEVisionModel
    from clipmoe_encoder.tower import default_image_processor

    torch.manual_seed(seed)
    config = CLIPMoEVisionConfig(**{**TOWER, **overrides})
    model = CLIPMoEVisionModel(config)
    model.save_pretrained(directory)
    default_image_processor(config).save_pretrained(directory)
    return directory


def build_world(root, seed=0) -> TinyWorld:
    root = os.path.abspath(root)
    world = TinyWorld(root, os.path.join(root, "llm"), os.path.join(root, "clipmoe-tower"), os.path.join(root, "images"),
                      os.path.join(root, "pretrain.json"), os.path.join(root, "finetune.json"))
    os.makedirs(world.images, exist_ok=True)
    samples = _samples(seed)
    for s in samples:
        _draw(s, os.path.join(world.images, s["file"]))
    pretrain, finetune = _conversations(samples)
    for path, data in ((world.pretrain_json, pretrain), (world.finetune_json, finetune)):
        with open(path, "w") as f:
            json.dump(data, f, indent=1)
    tokenizer = build_tokenizer(world.llm, _corpus(pretrain, finetune))
    build_llm(world.llm, len(tokenizer), seed)
    build_tower(world.tower, seed)
    return world


def llava_model_args(tower_name, **overrides):
    """LLaVA-1.5's model arguments (as train.py parses them) for building a LLaVA in-process."""
    from types import SimpleNamespace

    args = {"vision_tower": tower_name, "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
            "pretrain_mm_mlp_adapter": None, "mm_patch_merge_type": "flat", "mm_projector_type": "mlp2x_gelu",
            "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "mm_vision_moe_tune": "none",
            "mm_vision_moe_lr": None, "mm_vision_moe_aux_loss_coef": None}
    args.update(overrides)
    return SimpleNamespace(**args)


def build_llava(world: TinyWorld, seed=0, **overrides):
    """A LLaVA-1.5 model with the tiny CLIP-MoE tower, wired as llava/train/train.py does.
    `register()` must have run. Returns (model, tokenizer)."""
    from llava.model import LlavaLlamaForCausalLM
    from transformers import AutoTokenizer

    torch.manual_seed(seed)
    model = LlavaLlamaForCausalLM.from_pretrained(world.llm)
    tokenizer = AutoTokenizer.from_pretrained(world.llm, use_fast=False)
    tokenizer.pad_token = tokenizer.unk_token
    model_args = llava_model_args("clipmoe:" + world.tower, **overrides)
    model.get_model().initialize_vision_modules(model_args)
    model.config.image_aspect_ratio = "pad"
    model.config.tokenizer_padding_side = "right"
    model.config.mm_use_im_start_end = False
    model.config.mm_use_im_patch_token = False
    with torch.no_grad():  # a projector that is not all tiny values, so tower changes show in the logits
        for p in model.get_model().mm_projector.parameters():
            p.normal_(0, 0.2)
    return model, tokenizer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="directory to create the tiny world in")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_world(args.out, args.seed).as_shell())


if __name__ == "__main__":
    main()
