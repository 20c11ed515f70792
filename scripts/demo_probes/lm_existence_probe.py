"""Text-only existence probe of the chain's language model (see README.md here).

python scripts/demo_probes/lm_existence_probe.py --out DIR [--fresh] [--loss answer] [--steps 3000]
python scripts/demo_probes/lm_existence_probe.py --evaluate CHAIN/llava/llm    (a trained LM, no training)

Every evaluation also asks four-option questions (MMBench-style, the caption in context): can
the LM name the right letter when the answer is in its context?
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter

import numpy as np
import torch
from llava.conversation import conv_templates
from transformers import AutoTokenizer, LlamaForCausalLM, get_cosine_schedule_with_warmup

from clipmoe_demo import tiny_llava as tiny
from clipmoe_demo import world as W
from clipmoe_demo.chain import data as D
from clipmoe_demo.chain.language_model import clipped_step, vicuna_text

CORPUS_SCENES = 2400  # the full chain's n_train


def scene(split: str, index: int, settings: W.WorldSettings) -> dict:
    """A scene's attributes and captions without drawing it (the generator alone is cheap)."""
    return {**W.sample_scene(W.scene_rng(settings.seed, split, index), settings).to_dict(), "index": index,
            "image": f"{split}/{index}.png"}


def conversation_text(s: dict, existence_pairs: int = 0, mc_turns: int = 0) -> str:
    """The chain's stage-2 conversation of the scene, its caption where the image was; with
    existence_pairs or mc_turns > 0 instead that many "Yes" and as many "No" existence questions
    and that many four-option questions in a random order (denser supervision of the lookups the
    probe asks for)."""
    turns = D.finetune_records([s])[0]["conversations"]
    if existence_pairs or mc_turns:
        turns = D.conversation(D.dense_turns(s, random.Random(f"dense-{s['index']}"), existence_pairs, mc_turns))
    return vicuna_text(turns, s["caption"])


def probe_questions(tests: list[dict]) -> list[tuple[str, str, str]]:
    """(caption, question, answer): per scene one present pair, one random and one near-miss absent pair."""
    out = []
    for s in tests:
        rng = random.Random(f"probe-{s['index']}")
        (yes, _), (no, _) = D.existence_turns(s, rng)
        near = D.pope_negatives(s, "adversarial", 1, rng, Counter())
        out += [(s["caption"], yes, "Yes"), (s["caption"], no, "No")]
        out += [(s["caption"], f"{D.existence_question(*pair)}\n{D.SHORT_ANSWER}", "No") for pair in near]
    return out


def mc_probe_questions(tests: list[dict]) -> list[tuple[str, str, int, str]]:
    """(caption, four-option question as the chain asks it, index of the right option, type): one per scene."""
    out = []
    for s in tests:
        rng = random.Random(f"mc-{s['index']}")
        item = rng.choice(D.scene_questions(s))
        options, answer = D.multiple_choice(item, rng)
        out.append((s["caption"], D.mc_text(item["question"], options), answer, item["type"]))
    return out


def prompt_ids(tokenizer, caption: str, question: str) -> list[int]:
    """The first user turn with the caption where the image would be, up to "ASSISTANT:"."""
    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message(conv.roles[0], f"{caption}\n{question}")
    conv.append_message(conv.roles[1], None)
    return tokenizer(conv.get_prompt())["input_ids"]


def short_probe_questions(tests: list[dict]) -> list[tuple[str, str, str, str]]:
    """(caption, short-answer question, answer, type): every question the scene answers uniquely."""
    return [(s["caption"], D.short_turn(item)[0], item["answer"], item["type"]) for s in tests for item in D.scene_questions(s)]


def answer_log_probs(model, prompt: list[int], answers: list[list[int]]):
    """The log-probability of each answer's tokens after the prompt ("top left" and "top" share a
    first token, so the whole answer is scored), all answers in one batch."""
    width = len(prompt) + max(len(a) for a in answers)
    ids = torch.zeros(len(answers), width, dtype=torch.long)
    for i, a in enumerate(answers):
        ids[i, :len(prompt) + len(a)] = torch.tensor(prompt + a)
    log_probs = model(ids).logits.log_softmax(-1)
    return torch.stack([sum(log_probs[i, len(prompt) - 1 + k, token] for k, token in enumerate(a))
                        for i, a in enumerate(answers)])


class Evaluation:
    """The held-out text probes (200 test scenes): existence questions (a third "Yes", so the
    balanced accuracy), four-option questions (the right letter among A-D, chance 25) and
    short-answer questions (right when the answer is the likeliest of its answer space, each
    scored over all its tokens; chance 11-25 by type)."""

    def __init__(self, tokenizer, settings: W.WorldSettings):
        tests = [scene("test", i, settings) for i in range(200)]
        self.answer_ids = {w: tokenizer(f" {w}", add_special_tokens=False)["input_ids"][-1] for w in ("Yes", "No", *D.MC_LETTERS)}
        self.existence = [(prompt_ids(tokenizer, c, q), a) for c, q, a in probe_questions(tests)]
        self.mc = [(prompt_ids(tokenizer, c, q), a, t) for c, q, a, t in mc_probe_questions(tests)]
        spelt = {w: tokenizer(f" {w}", add_special_tokens=False)["input_ids"] for space in D.ANSWER_SPACES.values() for w in space}
        self.short = [(prompt_ids(tokenizer, c, q), [spelt[w] for w in D.ANSWER_SPACES[t]], D.ANSWER_SPACES[t].index(a), t)
                      for c, q, a, t in short_probe_questions(tests)]

    @torch.no_grad()
    def __call__(self, model) -> dict:
        was_training = model.training
        model.eval()
        right, said_yes = Counter(), 0
        for ids, answer in self.existence:
            logits = model(torch.tensor([ids])).logits[0, -1]
            guess = "Yes" if logits[self.answer_ids["Yes"]] > logits[self.answer_ids["No"]] else "No"
            right[answer] += guess == answer
            said_yes += guess == "Yes"
        letters = [self.answer_ids[letter] for letter in D.MC_LETTERS]
        mc_right = [(kind, int(model(torch.tensor([ids])).logits[0, -1, letters].argmax()) == answer) for ids, answer, kind in self.mc]
        short_right = [(kind, int(answer_log_probs(model, ids, space).argmax()) == answer) for ids, space, answer, kind in self.short]
        model.train(was_training)
        totals = Counter(answer for _, answer in self.existence)
        per_answer = {f"right_when_{k}": round(100 * right[k] / totals[k], 1) for k in totals}
        # balanced: a third of the probes are "Yes", so always answering "No" scores 66.7 plain accuracy, 50 balanced
        return {"balanced_accuracy": round(sum(per_answer.values()) / len(per_answer), 1),
                "yes_ratio": round(100 * said_yes / len(self.existence), 1), **per_answer,
                "multiple_choice_accuracy": percent(mc_right), "multiple_choice_by_type": percent_by_type(mc_right),
                "short_answer_accuracy": percent(short_right), "short_answer_by_type": percent_by_type(short_right)}


def percent(outcomes: list[tuple[str, bool]]) -> float:
    return round(100 * sum(right for _, right in outcomes) / len(outcomes), 1)


def percent_by_type(outcomes: list[tuple[str, bool]]) -> dict[str, float]:
    """Accuracy per question type (colour, shape, count, position): which lookup the LM lacks."""
    return {kind: percent([o for o in outcomes if o[0] == kind]) for kind in sorted({k for k, _ in outcomes})}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="folder for the tokenizer and model (required unless --evaluate)")
    p.add_argument("--evaluate", metavar="LLM_DIR", help="only evaluate this trained LM (a chain's DIR/llava/llm)")
    p.add_argument("--fresh", action="store_true", help="new scenes every batch instead of the chain's fixed ones")
    p.add_argument("--loss", choices=("full", "answer"), default="full", help="loss on every token or on the answers")
    p.add_argument("--existence-pairs", type=int, default=0,
                   help="train on conversations of this many Yes and No existence questions instead of the chain's mix")
    p.add_argument("--mc-turns", type=int, default=0,
                   help="with --existence-pairs (or alone): also this many four-option questions per conversation")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--eval-every", type=int, default=250)
    a = p.parse_args(argv)
    if not (a.out or a.evaluate):
        p.error("--out or --evaluate is required")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    settings = W.WorldSettings(image_size=48)
    if a.evaluate:
        print(Evaluation(AutoTokenizer.from_pretrained(a.evaluate), settings)(LlamaForCausalLM.from_pretrained(a.evaluate)))
        return
    corpus = [scene("train", i, settings) for i in range(CORPUS_SCENES)]
    tokenizer = tiny.build_tokenizer(a.out, tiny.conversation_corpus(
        D.pretrain_records(corpus), D.finetune_records(corpus), joined=True), vocab_size=1000)
    tiny.build_llm(a.out, len(tokenizer), 0, hidden_size=a.hidden, intermediate_size=2 * a.hidden, num_hidden_layers=a.layers)
    model = LlamaForCausalLM.from_pretrained(a.out)
    assistant = tokenizer(" ASSISTANT:", add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id

    def encode(s):
        ids = tokenizer(conversation_text(s, a.existence_pairs, a.mc_turns))["input_ids"][:512]
        if a.loss == "full":
            return ids, list(ids)
        labels = [-100] * len(ids)  # the tokens after each "ASSISTANT:" up to and with its </s>
        for k in range(len(ids) - len(assistant)):
            if ids[k:k + len(assistant)] == assistant:
                j = k + len(assistant)
                while j < len(ids):
                    labels[j] = ids[j]
                    if ids[j] == eos:
                        break
                    j += 1
        return ids, labels

    evaluate = Evaluation(tokenizer, settings)
    fixed = None if a.fresh else [encode(s) for s in corpus]
    optimizer = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, a.steps // 20), a.steps)
    rng, next_scene, start, window = random.Random(0), 10**6, time.perf_counter(), []
    for step in range(1, a.steps + 1):
        if fixed:
            rows = rng.sample(fixed, a.batch)
        else:
            rows = [encode(scene("train", next_scene + k, settings)) for k in range(a.batch)]
            next_scene += a.batch
        width = max(len(ids) for ids, _ in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        labels = torch.full((len(rows), width), -100)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, (x, y) in enumerate(rows):
            ids[i, :len(x)], labels[i, :len(y)], mask[i, :len(x)] = torch.tensor(x), torch.tensor(y), 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        window.append(clipped_step(loss, model.parameters(), optimizer, schedule))
        if step % a.eval_every == 0 or step == a.steps:
            print(step, f"loss {np.mean(window):.3f}", evaluate(model), f"{time.perf_counter() - start:.0f} s", flush=True)
            window = []


if __name__ == "__main__":
    main()
