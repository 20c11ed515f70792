"""The chain's language model, built and trained by code (no download): a sentencepiece BPE
vocabulary learned from the procedural world's text, a small Llama on it, and causal-LM training on
that text alone (captions, and the stage-2 conversations rendered in LLaVA's vicuna_v1 template
without their image). LLaVA's stage 1 then aligns image features with a model that already speaks
the world's language, as it does with Vicuna; from a random LLM it could only learn noise.

Both LLaVA runs start from this one model, so the towers get the same LLM and budget. A finished
model is reused by a rerun with the same plan (marker file written last).
"""

from __future__ import annotations

import json
import os
import random
import time

DONE_MARKER = "chain_llm_done.json"


def conversation_texts(data_paths: dict) -> list[str]:
    """The training text: every stage-1 caption and every stage-2 conversation as LLaVA's
    vicuna_v1 template lays it out (the tokens stage 2 trains on), the image replaced by its
    caption (the same scene in words, from pretrain.json, matched by id).

    With the caption in place of the image the LM learns to answer from its context: to find
    "red circle" in the scene's description for "Is there a red circle?", which colour goes
    with "the star", which letter names it. Stage 1 then maps the image where the caption was.
    Without it (the conversations with the image just removed) the answers were unpredictable
    from the text, and the LM learned the answer priors instead (answer "Yes", answer "A")."""
    from llava.conversation import conv_templates

    with open(data_paths["pretrain"]) as f:
        captions = {record["id"]: record["conversations"][1]["value"] for record in json.load(f)}
    texts = list(captions.values())
    with open(data_paths["finetune"]) as f:
        finetune = json.load(f)
    for record in finetune:
        conv = conv_templates["vicuna_v1"].copy()
        for turn in record["conversations"]:
            role = conv.roles[0] if turn["from"] == "human" else conv.roles[1]
            conv.append_message(role, turn["value"].replace("<image>", captions.get(record["id"], "")).strip())
        texts.append(conv.get_prompt())
    return texts


def _batches(encoded: list[list[int]], batch: int, steps: int, seed: int):
    """Seeded epochs of shuffled batches, as many as `steps`."""
    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(steps):
        if len(order) < batch:
            more = list(range(len(encoded)))
            rng.shuffle(more)
            order += more
        yield [encoded[i] for i in order[:batch]]
        del order[:batch]


def _collate(rows: list[list[int]]):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)  # padding is not predicted
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        labels[i, :len(r)] = ids[i, :len(r)]
        mask[i, :len(r)] = 1
    return ids, mask, labels


def clipped_step(loss, parameters, optimizer, schedule, max_norm: float = 1.0) -> float:
    """One update: backward, the gradient norm clipped, optimizer and schedule stepped, gradients
    cleared; returns the loss value."""
    import torch

    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def train_language_model(model_dir: str, texts: list[str], steps: int, batch: int, lr: float, seed: int,
                         max_length: int = 256, log_every: int = 10, log=None, progress_every: float = 30.0) -> list[dict]:
    """Causal-LM training of the Llama in model_dir on texts (AdamW, warmup then cosine); saves
    the model back and returns the loss history [{"step", "loss"}]. log: a progress line
    (step/total, loss, ETA) at most every progress_every seconds."""
    from .progress import Throttle, progress_line

    import torch
    from transformers import (
        AutoTokenizer,
        LlamaForCausalLM,
        get_cosine_schedule_with_warmup,
    )

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    encoded = [ids[:max_length] for ids in tokenizer(texts)["input_ids"]]
    model = LlamaForCausalLM.from_pretrained(model_dir)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 20), steps)
    history, window = [], []
    throttle = Throttle(progress_every)
    for step, rows in enumerate(_batches(encoded, batch, steps, seed), start=1):
        ids, mask, labels = _collate(rows)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        window.append(clipped_step(loss, model.parameters(), optimizer, schedule))
        if step % log_every == 0 or step == steps:
            history.append({"step": step, "loss": sum(window) / len(window)})
            window = []
            if log and throttle.due(final=step == steps):
                log(progress_line("language model", step, steps, history[-1]["loss"], throttle.eta(step, steps)))
    model.save_pretrained(model_dir)
    return history


def build_untrained(out_dir: str, data_paths: dict, plan) -> None:
    """The sentencepiece BPE learned from the conversations (vicuna_v1 layout) and a randomly
    initialised Llama of the plan's sizes on it, saved in out_dir."""
    from .. import tiny_llava as tiny

    records = []
    for name in ("pretrain", "finetune"):
        with open(data_paths[name]) as f:
            records.append(json.load(f))
    tokenizer = tiny.build_tokenizer(out_dir, tiny.conversation_corpus(*records, joined=True), vocab_size=plan.vocab_size)
    tiny.build_llm(out_dir, len(tokenizer), plan.seed, hidden_size=plan.llm_hidden,
                   intermediate_size=2 * plan.llm_hidden, num_hidden_layers=plan.llm_layers)


def build_language_model(out_dir: str, data_paths: dict, plan, log=None, progress_every: float = 30.0) -> dict:
    """Tokenizer + Llama + LM training (plan: llava_runs.LlavaPlan); returns
    {"dir", "history", "seconds", "reused"}. log, progress_every: see train_language_model."""
    from dataclasses import asdict

    marker = os.path.join(out_dir, DONE_MARKER)
    settings = asdict(plan)
    if os.path.isfile(marker):
        with open(marker) as f:
            done = json.load(f)
        if done.get("settings") == settings:
            return {"dir": out_dir, "history": done["history"], "seconds": done["seconds"], "reused": True}
    start = time.perf_counter()
    build_untrained(out_dir, data_paths, plan)
    history = train_language_model(out_dir, conversation_texts(data_paths), plan.lm_steps, plan.batch, plan.lm_lr,
                                   plan.seed, log=log, progress_every=progress_every)
    seconds = time.perf_counter() - start
    tmp = marker + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"settings": settings, "history": history, "seconds": seconds}, f)
    os.replace(tmp, marker)
    return {"dir": out_dir, "history": history, "seconds": seconds, "reused": False}
