"""LLaVA-1.5's layout on frozen tower features, existence questions only (see README.md here).

python scripts/demo_probes/llava_feature_probe.py --tower DEMO/seed0/base/model --world DEMO/world --tokenizer LM_DIR [--k 8]

--tokenizer: a folder with the chain's sentencepiece tokenizer (DIR/llava/llm of a chain run, or
lm_existence_probe.py's --out). The Llama starts from random weights.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections import Counter

import numpy as np
import torch
from llava.conversation import conv_templates
from PIL import Image
from torch import nn
from transformers import (
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPModel,
    LlamaConfig,
    LlamaForCausalLM,
    get_cosine_schedule_with_warmup,
)

from clipmoe_demo import world as W
from clipmoe_demo.chain import data as D
from clipmoe_demo.chain.language_model import clipped_step


@torch.no_grad()
def patch_features(tower_dir: str, world_dir: str, scenes: list[dict], layer: int) -> torch.Tensor:
    """(N, patches, D): the hidden states LLaVA takes (mm_vision_select_layer, CLS dropped)."""
    vision = CLIPModel.from_pretrained(tower_dir).vision_model.eval()
    processor = CLIPImageProcessor.from_pretrained(tower_dir)
    out = []
    for i in range(0, len(scenes), 64):
        images = [Image.open(os.path.join(world_dir, s["image"])).convert("RGB") for s in scenes[i:i + 64]]
        out.append(vision(**processor(images, return_tensors="pt"), output_hidden_states=True).hidden_states[layer][:, 1:])
    return torch.cat(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tower", required=True, help="a dense CLIP folder (the demo's base)")
    p.add_argument("--world", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--llm", help="start from this trained Llama (a chain's DIR/llava/llm) instead of random weights")
    p.add_argument("--k", type=int, default=1, help="existence questions per image and training sequence")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--layer", type=int, default=-2, help="mm_vision_select_layer")
    p.add_argument("--n-train", type=int, default=2400)
    p.add_argument("--eval-every", type=int, default=250)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train, test = W.read_scenes(a.world, "train")[:a.n_train], W.read_scenes(a.world, "test")[:200]
    features = {"train": patch_features(a.tower, a.world, train, a.layer), "test": patch_features(a.tower, a.world, test, a.layer)}
    tokenizer = AutoTokenizer.from_pretrained(a.tokenizer)
    llm = LlamaForCausalLM.from_pretrained(a.llm) if a.llm else LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=a.hidden, intermediate_size=2 * a.hidden,
                                       num_hidden_layers=a.layers, num_attention_heads=4, num_key_value_heads=4,
                                       max_position_embeddings=1024, bos_token_id=1, eos_token_id=2))
    a.hidden = llm.config.hidden_size
    projector = nn.Sequential(nn.Linear(features["train"].shape[-1], a.hidden), nn.GELU(), nn.Linear(a.hidden, a.hidden))
    embed = llm.get_input_embeddings()
    yes, no = (tokenizer(f" {w}", add_special_tokens=False)["input_ids"][-1] for w in ("Yes", "No"))

    def first_turn(question: str) -> tuple[list[int], list[int]]:
        conv = conv_templates["vicuna_v1"].copy()
        conv.append_message(conv.roles[0], "<image>\n" + question)
        conv.append_message(conv.roles[1], None)
        before, after = conv.get_prompt().split("<image>")
        return tokenizer(before)["input_ids"], tokenizer(after, add_special_tokens=False)["input_ids"]

    def sequence(image_features, questions: list[tuple[str, int]]) -> tuple[torch.Tensor, list[int]]:
        """The embedded conversation and the positions whose next token is an answer."""
        before, after = first_turn(questions[0][0])
        parts = [embed(torch.tensor(before)), projector(image_features), embed(torch.tensor(after))]
        length = len(before) + len(image_features) + len(after)
        positions = [length - 1]
        for (_, answer), (question, _) in zip(questions[:-1], questions[1:]):
            more = [answer] + tokenizer(f"</s>USER: {question} ASSISTANT:", add_special_tokens=False)["input_ids"]
            parts.append(embed(torch.tensor(more)))
            length += len(more)
            positions.append(length - 1)
        return torch.cat(parts), positions

    def training_question(s: dict, rng: random.Random) -> tuple[str, int]:
        if rng.random() < 0.5:
            return D.existence_question(*rng.choice(sorted(D.present_pairs(s)))) + "\n" + D.SHORT_ANSWER, yes
        pair = D.pope_negatives(s, rng.choice(("random", "adversarial")), 1, rng, Counter())[0]
        return D.existence_question(*pair) + "\n" + D.SHORT_ANSWER, no

    frequency = D.pair_frequencies(train)
    probes = []
    for i, s in enumerate(test):
        for split in D.POPE_SPLITS:
            rng = random.Random(f"0-pope-{split}-{s['index']}")
            present = sorted(D.present_pairs(s))
            asked = [(pair, yes) for pair in present] + [(pair, no) for pair in D.pope_negatives(s, split, len(present), rng, frequency)]
            probes += [(split, i, D.existence_question(*pair) + "\n" + D.SHORT_ANSWER, label) for pair, label in asked]

    @torch.no_grad()
    def evaluate() -> dict:
        llm.eval()
        right, said_yes, total = Counter(), 0, Counter()
        for split, i, question, label in probes:
            x, _ = sequence(features["test"][i], [(question, label)])
            logits = llm(inputs_embeds=x[None]).logits[0, -1]
            guess = yes if logits[yes] > logits[no] else no
            right[split] += guess == label
            total[split] += 1
            said_yes += guess == yes
        llm.train()
        accuracy = {split: round(100 * right[split] / total[split], 1) for split in total}
        return {"pope_mean": round(float(np.mean(list(accuracy.values()))), 1), **accuracy,
                "yes_ratio": round(100 * said_yes / len(probes), 1)}

    params = list(llm.parameters()) + list(projector.parameters())
    optimizer = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, a.steps // 30), a.steps)
    rng, start, window = random.Random(0), time.perf_counter(), []
    for step in range(1, a.steps + 1):
        rows, targets = [], []
        for i in rng.sample(range(len(train)), a.batch):
            questions = [training_question(train[i], rng) for _ in range(a.k)]
            rows.append(sequence(features["train"][i], questions))
            targets += [answer for _, answer in questions]
        width = max(len(x) for x, _ in rows)
        x = torch.stack([torch.cat([r, r.new_zeros(width - len(r), a.hidden)]) for r, _ in rows])
        mask = torch.stack([torch.arange(width) < len(r) for r, _ in rows]).long()
        logits = llm(inputs_embeds=x, attention_mask=mask).logits
        picked = torch.stack([logits[row, pos] for row, (_, positions) in enumerate(rows) for pos in positions])
        window.append(clipped_step(nn.functional.cross_entropy(picked, torch.tensor(targets)), params, optimizer, schedule))
        if step % a.eval_every == 0 or step == a.steps:
            print(step, f"loss {np.mean(window):.3f}", evaluate(), f"{time.perf_counter() - start:.0f} s", flush=True)
            window = []


if __name__ == "__main__":
    main()
