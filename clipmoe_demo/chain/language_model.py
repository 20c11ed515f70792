"""The chain's language model, built and trained by code (no download): a sentencepiece BPE
vocabulary learned from the procedural world's text, a small Llama on it, and causal-LM training on
that text alone (conversations in the stage-2 mix's answer styles about text-only scenes, rendered
in LLaVA's vicuna_v1 template with the caption where the image goes). LLaVA's
stage 1 then aligns image features with a model that already speaks the world's language, as it
does with Vicuna; from a random LLM it could only learn noise.

Both LLaVA runs start from this one model, so the towers get the same LLM and budget. A finished
model is reused by a rerun with the same plan (marker file written last).
"""

from __future__ import annotations

import json
import os
import random
import time

from .. import world as W
from . import data as D

DONE_MARKER = "chain_llm_done.json"


# Per text scene: the stage-2 mix's answer styles, denser. The probe (scripts/demo_probes,
# lm_existence_probe.py --fresh --existence-pairs 2 --mc-turns 3) measured this lever: the chain's
# own four-turn conversations on its 2,400 fixed scenes left the LM at 59.0 balanced existence
# accuracy and 19.0 four-option accuracy on held-out captions; fresh scenes with two existence
# pairs and three four-option turns each reached 77.2 and 43.0 after 3,000 steps. Through the
# chain's own loop (chain_lm_vs_probe.py, 3,000 steps) those texts gave 78.3 / 35.0 (99.1 / 36.5
# in stop 31's chain) and a short-answer accuracy of 26.4: the LM had never been asked a short
# question. Two short turns taught it the answer (83.3 / 94.1 / 82.5 for colour / shape / count)
# but not its letter (four-option 32.5; 27.1 / 28.3 / 60.0), a third layer neither (33.5); six
# four-option turns instead of three, the letter lookup asked twice as often, took it to 76.5
# (balanced 88.3, short answers 69.4) at the cost of texts 1.6 times as long (442 tokens, not 270).
TEXT_TURNS = {"existence_pairs": 2, "mc_turns": 6, "short_turns": 2}


def vicuna_text(turns: list[dict], caption: str) -> str:
    """A conversation as LLaVA's vicuna_v1 template lays it out (the tokens stage 2 trains on),
    the scene's caption where the image was."""
    from llava.conversation import conv_templates

    conv = conv_templates["vicuna_v1"].copy()
    for turn in turns:
        role = conv.roles[0] if turn["from"] == "human" else conv.roles[1]
        conv.append_message(role, turn["value"].replace("<image>", caption).strip())
    return conv.get_prompt()


def text_conversation(scene: dict, seed: int) -> str:
    """One scene's training text: TEXT_TURNS' questions in the vicuna_v1 layout, caption in place of the image."""
    rng = random.Random(f"{seed}-text-{scene['index']}")
    return vicuna_text(D.conversation(D.dense_turns(scene, rng, **TEXT_TURNS)), scene["caption"])


def training_texts(world_dir: str, n_scenes: int, seed: int) -> list[str]:
    """The LM's text: conversations about n_scenes scenes of the world's "text" split (never drawn
    as images, so none is a benchmark's or LLaVA's training image). The stage-1 captions are not
    in it: each conversation holds its scene's caption already, and with them beside it the LM
    answered text-only four-option questions at chance (TEXT_TURNS).

    With the caption in place of the image the LM learns to answer from its context: to find
    "red circle" in the scene's description for "Is there a red circle?", which colour goes
    with "the star", which letter names it. Stage 1 then maps the image where the caption was.
    Without it (the conversations with the image just removed) the answers were unpredictable
    from the text, and the LM learned the answer priors instead (answer "Yes", answer "A")."""
    scenes = W.text_scenes(W.read_settings(world_dir), n_scenes)
    return [text_conversation(s, seed) for s in scenes]


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
    """(input ids, labels) of a batch, right-padded. No attention mask: under causal attention a
    real token attends only to the positions before it, all real when the padding is on the right,
    and the padding is not predicted, so a mask changes no loss (tested against each row alone);
    without one, torch's attention takes its faster causal path."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)  # padding is not predicted
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.as_tensor(r)
        labels[i, :len(r)] = ids[i, :len(r)]
    return ids, labels


def answer_mask(ids, assistant_id: int, eos_id: int):
    """True at the tokens of each assistant answer in a row of token ids (numpy): from after
    "ASSISTANT" ":" up to and with the answer's "</s>" (to the row's end for one cut off)."""
    import numpy as np

    starts = np.flatnonzero(ids == assistant_id) + 2
    ends = np.append(np.flatnonzero(ids == eos_id), len(ids) - 1)
    stops = ends[np.searchsorted(ends, starts)]
    inside = np.zeros(len(ids) + 1, dtype=np.int64)
    np.add.at(inside, starts[starts < len(ids)], 1)
    np.add.at(inside, stops[starts < len(ids)] + 1, -1)
    return np.cumsum(inside)[:-1] > 0


def answer_weights(ids, assistant_id: int, eos_id: int, weight: float):
    """Per-token loss weights of a batch (torch ids, right-padded): `weight` at the answers' tokens,
    1 elsewhere. Padding is never a label, so a cut-off answer marked into it weighs nothing."""
    import numpy as np
    import torch

    masks = [answer_mask(row, assistant_id, eos_id) for row in ids.numpy()]
    return 1.0 + (weight - 1.0) * torch.as_tensor(np.stack(masks), dtype=torch.float32)


def weighted_loss(logits, labels, weights):
    """Causal-LM cross-entropy with a weight per predicted token: the weighted mean over the labelled
    positions (with every weight 1, the model's own loss)."""
    import torch

    ce = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="none")
    w = weights[:, 1:].flatten() * (labels[:, 1:].flatten() != -100)
    return (ce * w).sum() / w.sum()


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
                         max_length: int = 512, log_every: int = 10, log=None, progress_every: float = 30.0,
                         after_step=None, threads_from: tuple[int, int] | None = None,
                         answer_weight: float = 1.0) -> list[dict]:
    """Causal-LM training of the Llama in model_dir on texts (AdamW, warmup then cosine); saves
    the model back and returns the loss history [{"step", "loss"}]. log: a progress line
    (step/total, loss, ETA) at most every progress_every seconds. threads_from: (step, n): from
    that step on, n torch threads (in the calling thread; its count is given back at the end);
    otherwise the caller's count throughout. The step is fixed, never set by timing: the thread
    count changes the model on some CPUs (they split a weight gradient's sum over the batch's
    tokens between threads), so a switch at a step set by timing would make the model depend on it.
    after_step: called as after_step(step, model) after each update (the probes evaluate the model
    on the way; it must leave the model in training mode). answer_weight: the loss weight of the
    assistant's answer tokens against 1 for every other token (1: the model's own loss; a probe's lever,
    lm_variant.py --answer-weight)."""
    from .progress import Throttle, progress_line

    import numpy as np
    import torch
    from transformers import (
        AutoTokenizer,
        LlamaForCausalLM,
        get_cosine_schedule_with_warmup,
    )

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # In chunks, kept as int32 arrays: ~50,000 texts of ~300 tokens as lists of Python ints take ~0.5 GB.
    encoded = []
    for i in range(0, len(texts), 1024):
        encoded += [np.asarray(ids[:max_length], dtype=np.int32) for ids in tokenizer(texts[i:i + 1024])["input_ids"]]
    assistant = tokenizer.convert_tokens_to_ids("\u2581ASSISTANT")
    model = LlamaForCausalLM.from_pretrained(model_dir)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 20), steps)
    history, window = [], []
    throttle = Throttle(progress_every)
    callers_threads = torch.get_num_threads()
    for step, rows in enumerate(_batches(encoded, batch, steps, seed), start=1):
        if threads_from and step == threads_from[0]:
            torch.set_num_threads(threads_from[1])  # OpenMP's count is this thread's own
            if log:
                log(f"[chain] language model: {threads_from[1]} torch threads from step {step}")
        ids, labels = _collate(rows)
        if answer_weight == 1.0:
            loss = model(input_ids=ids, labels=labels).loss
        else:
            weights = answer_weights(ids, assistant, tokenizer.eos_token_id, answer_weight)
            loss = weighted_loss(model(input_ids=ids).logits, labels, weights)
        window.append(clipped_step(loss, model.parameters(), optimizer, schedule))
        if step % log_every == 0 or step == steps:
            history.append({"step": step, "loss": sum(window) / len(window)})
            window = []
            if log and throttle.due(final=step == steps):
                log(progress_line("language model", step, steps, history[-1]["loss"], throttle.eta(step, steps)))
        if after_step:
            after_step(step, model)
    torch.set_num_threads(callers_threads)
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


def build_language_model(out_dir: str, world_dir: str, data_paths: dict, plan, log=None,
                         progress_every: float = 30.0) -> dict:
    """Tokenizer + Llama + LM training (plan: llava_runs.LlavaPlan) on training_texts, one text
    scene per training row (plan.lm_steps * plan.batch, each seen about once: fresh scenes were
    the probe's lever); returns {"dir", "history", "seconds", "reused"}. log, progress_every: see
    train_language_model."""
    from dataclasses import asdict

    marker = os.path.join(out_dir, DONE_MARKER)
    settings = {**asdict(plan), "text_turns": TEXT_TURNS}  # a model trained on other texts is not reused
    if os.path.isfile(marker):
        with open(marker) as f:
            done = json.load(f)
        if done.get("settings") == settings:
            return {"dir": out_dir, "history": done["history"], "seconds": done["seconds"], "reused": True}
    start = time.perf_counter()
    build_untrained(out_dir, data_paths, plan)
    texts = training_texts(world_dir, plan.lm_steps * plan.batch, plan.seed)
    more = (plan.lm_two_threads_from, 2) if plan.lm_two_threads_from else None
    history = train_language_model(out_dir, texts, plan.lm_steps, plan.batch, plan.lm_lr, plan.seed,
                                   log=log, progress_every=progress_every, threads_from=more)
    seconds = time.perf_counter() - start
    tmp = marker + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"settings": settings, "history": history, "seconds": seconds}, f)
    os.replace(tmp, marker)
    return {"dir": out_dir, "history": history, "seconds": seconds, "reused": False}
