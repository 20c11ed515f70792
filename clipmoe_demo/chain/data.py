"""Procedural LLaVA data and benchmarks from the demo world's structured scene attributes.

Every question is derived from a scene's groups (shape, colour, size, count, region), never from
caption text, and is only asked where the scene makes its answer unique (a colour question names
a shape that only one group has, and so on). Training data come from the world's train split,
benchmarks from its held-out test split, so no benchmark image is ever seen in training.

Files (image paths relative to the world directory, which is the image folder everywhere):
  stage 1: pretrain.json     LCS-558K format, "<image>" -> the scene's caption
  stage 2: finetune.json     mix665k format, multi-turn: short answers, yes/no, multiple choice
  POPE:    pope/llava_pope_test.jsonl (question_id, image, text, category) + pope/coco_pope_{split}.json
  GQA:     gqa/llava_gqa_testdev_balanced.jsonl + gqa/testdev_balanced_questions.json
  MMBench: mmbench/mmbench_dev.tsv (index, question, hint, A-D, answer, category, ..., image base64)
"""

from __future__ import annotations

import base64
import csv
import json
import os
import random
from collections import Counter

# LLaVA's instructions, as eval_mllm's question files and readers append them.
from eval_mllm.prompts import MULTIPLE_CHOICE, SHORT_ANSWER

from .. import world as W

MC_LETTERS = "ABCD"

COUNT_ANSWERS = {1: "one", 2: "two", 3: "three", 4: "four"}
POPE_SPLITS = ("adversarial", "popular", "random")
# The answer space of each question type: a uniform guess is right 1/len of the time.
ANSWER_SPACES = {
    "colour": list(W.COLOURS),
    "shape": list(W.SHAPES),
    "count": list(COUNT_ANSWERS.values()),
    "position": list(W.REGIONS),
}


# ---------------------------------------------------------------------------------------------
# questions about one scene

def _noun(group: dict, with_colour: bool = True) -> str:
    shape = W.PLURALS[group["shape"]] if group["count"] > 1 else group["shape"]
    return f"{group['colour']} {shape}" if with_colour else shape


def _be(group: dict) -> str:
    return "are" if group["count"] > 1 else "is"


def scene_questions(scene: dict) -> list[dict]:
    """Every unambiguous short-answer question about a scene: {"type", "question", "answer"}.

    colour: about a shape only one group has; shape: about a colour only one group has; count and
    position: about a (colour, shape) pair, unique in every scene of the world."""
    groups = scene["groups"]
    shapes = Counter(g["shape"] for g in groups)
    colours = Counter(g["colour"] for g in groups)
    out = []
    for g in groups:
        if shapes[g["shape"]] == 1:
            out.append({"type": "colour", "question": f"What colour {_be(g)} the {_noun(g, with_colour=False)}?",
                        "answer": g["colour"]})
        if colours[g["colour"]] == 1:
            thing = "objects" if g["count"] > 1 else "object"
            out.append({"type": "shape", "question": f"What shape {_be(g)} the {g['colour']} {thing}?",
                        "answer": g["shape"]})
        out.append({"type": "count", "question": f"How many {g['colour']} {W.PLURALS[g['shape']]} are there?",
                    "answer": COUNT_ANSWERS[g["count"]]})
        out.append({"type": "position", "question": f"Where {_be(g)} the {_noun(g)}?", "answer": g["region"]})
    return out


def present_pairs(scene: dict) -> set[tuple[str, str]]:
    return {(g["colour"], g["shape"]) for g in scene["groups"]}


def existence_question(colour: str, shape: str) -> str:
    article = "an" if colour[0] in "aeiou" else "a"
    return f"Is there {article} {colour} {shape} in the image?"


ALL_PAIRS = [(c, s) for c in W.COLOURS for s in W.SHAPES]


def pair_frequencies(scenes: list[dict]) -> Counter:
    """How many scenes hold each (colour, shape): POPE's "popular" negatives are the most frequent."""
    return Counter(p for s in scenes for p in present_pairs(s))


def pope_negatives(scene: dict, split: str, n: int, rng: random.Random, frequency: Counter) -> list[tuple[str, str]]:
    """n absent (colour, shape) pairs, chosen as POPE chooses absent objects:
    random: uniformly; popular: the most frequent in the training scenes; adversarial: near
    misses, pairs that share the colour or the shape of a present group (POPE: objects that
    co-occur with the present ones), so only binding colour to shape tells them apart."""
    present = present_pairs(scene)
    absent = [p for p in ALL_PAIRS if p not in present]
    if split == "random":
        return rng.sample(absent, n)
    if split == "popular":
        ranked = sorted(absent, key=lambda p: (-frequency[p], ALL_PAIRS.index(p)))
        return ranked[:n]
    if split == "adversarial":
        near = [p for p in absent if any(p[0] == c or p[1] == s for c, s in present)]
        rng.shuffle(near)
        return near[:n]
    raise ValueError(f"unknown POPE split {split!r}")


def multiple_choice(item: dict, rng: random.Random) -> tuple[list[str], int]:
    """Four options: the answer and three others of its answer space, in a random order."""
    others = [a for a in ANSWER_SPACES[item["type"]] if a != item["answer"]]
    options = rng.sample(others, len(MC_LETTERS) - 1) + [item["answer"]]
    rng.shuffle(options)
    return options, options.index(item["answer"])


def mc_text(question: str, options: list[str]) -> str:
    """The user turn as eval_mllm.questions.read_mmbench builds it (no hint)."""
    lines = [question] + [f"{letter}. {option}" for letter, option in zip(MC_LETTERS, options)]
    return "\n".join(lines) + "\n" + MULTIPLE_CHOICE


def mc_turn(item: dict, rng: random.Random) -> tuple[str, str]:
    """A training turn of the item as a four-option question: (user text, the right letter)."""
    options, answer = multiple_choice(item, rng)
    return mc_text(item["question"], options), MC_LETTERS[answer]


# ---------------------------------------------------------------------------------------------
# training conversations

def _turn(human: str, gpt: str) -> list[dict]:
    return [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]


def pretrain_records(scenes: list[dict]) -> list[dict]:
    """Stage 1 (LCS-558K format): the image alone, then its caption (LLaVA's 'plain' template)."""
    return [{"id": f"train-{s['index']}", "image": s["image"],
             "conversations": _turn("<image>", s["caption"])} for s in scenes]


def existence_turns(scene: dict, rng: random.Random) -> list[tuple[str, str]]:
    """One "Yes" and one "No" existence question about the scene, as POPE asks them. The negative
    is drawn as POPE draws it, half the time a random absent pair, half the time a near miss
    sharing the colour or the shape of a present group (POPE's adversarial negatives), so that
    binding colour to shape is learned, not only which colours are present."""
    colour, shape = rng.choice(sorted(present_pairs(scene)))
    negative = pope_negatives(scene, rng.choice(("random", "adversarial")), 1, rng, Counter())[0]
    return [(f"{existence_question(colour, shape)}\n{SHORT_ANSWER}", "Yes"),
            (f"{existence_question(*negative)}\n{SHORT_ANSWER}", "No")]


def finetune_records(scenes: list[dict], seed: int = 0) -> list[dict]:
    """Stage 2 (mix665k format): per scene a four-turn conversation in the three answer styles
    the benchmarks ask for: an existence question answered "Yes" and one answered "No" (the
    same image, so the answer prior is useless and only the image decides), a lettered multiple
    choice (the right letter uniform over A-D) and a short answer, in a random order; the image
    token is in the first turn, as in LLaVA's data. (Captions are stage 1's task.)

    The balance matters: turns drawn at random from all of a scene's questions gave ~0.9
    existence turns per scene, and the LLaVAs trained on them answered "Yes" to ~all POPE-style
    questions (accuracy 50, yes-ratio 100; the README's numbers before this change)."""
    records = []
    for s in scenes:
        rng = random.Random(f"{seed}-finetune-{s['index']}")
        short, mc = rng.sample(scene_questions(s), 2)
        choice = mc_turn(mc, rng)  # drawn before the existence turns: the records stay what they were
        chosen = existence_turns(s, rng) + [choice, short_turn(short)]
        rng.shuffle(chosen)
        records.append({"id": f"train-{s['index']}", "image": s["image"], "conversations": conversation(chosen)})
    return records


def short_turn(item: dict) -> tuple[str, str]:
    return f"{item['question']}\n{SHORT_ANSWER}", item["answer"]


def conversation(asked: list[tuple[str, str]]) -> list[dict]:
    """(question, answer) pairs as LLaVA's conversation turns, the image token in the first."""
    turns = []
    for i, (human, gpt) in enumerate(asked):
        turns += _turn(("<image>\n" + human) if i == 0 else human, gpt)
    return turns


def dense_turns(scene: dict, rng: random.Random, existence_pairs: int, mc_turns: int, short_turns: int = 0) -> list[tuple[str, str]]:
    """More questions per scene than a stage-2 conversation holds, in a random order:
    existence_pairs "Yes"/"No" pairs (as existence_turns), mc_turns four-option questions (of
    any of the scene's questions, repeats allowed) and short_turns distinct short-answer ones.
    The language model's text (language_model.py): denser supervision of the lookups the
    benchmarks ask for."""
    asked = [qa for _ in range(existence_pairs) for qa in existence_turns(scene, rng)]
    asked += [mc_turn(item, rng) for item in rng.choices(scene_questions(scene), k=mc_turns)]
    if short_turns:  # no draw when none are asked: the probe's texts stay what they were
        asked += [short_turn(item) for item in rng.sample(scene_questions(scene), short_turns)]
    rng.shuffle(asked)
    return asked


def write_training_data(world_dir: str, out_dir: str, n_train: int, seed: int = 0) -> dict:
    """pretrain.json and finetune.json from the first n_train training scenes."""
    scenes = W.read_scenes(world_dir, "train")[:n_train]
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for name, records in (("pretrain", pretrain_records(scenes)), ("finetune", finetune_records(scenes, seed))):
        paths[name] = os.path.join(out_dir, f"{name}.json")
        with open(paths[name], "w") as f:
            json.dump(records, f, indent=1)
    return paths


# ---------------------------------------------------------------------------------------------
# benchmarks

def _write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def write_pope(test_scenes: list[dict], train_scenes: list[dict], out_dir: str, seed: int = 0) -> dict:
    """POPE's layout: one question file over all splits (ids unique across them, an instruction
    line appended) and per split a label file numbered from 1. Each image: one "yes" per present
    group and as many "no" questions."""
    os.makedirs(out_dir, exist_ok=True)
    frequency = pair_frequencies(train_scenes)
    questions, qid = [], 0
    for split in POPE_SPLITS:
        labels = []
        for s in test_scenes:
            rng = random.Random(f"{seed}-pope-{split}-{s['index']}")
            positives = sorted(present_pairs(s))
            asked = [(p, "yes") for p in positives]
            asked += [(p, "no") for p in pope_negatives(s, split, len(positives), rng, frequency)]
            for (colour, shape), label in asked:
                text = existence_question(colour, shape)
                qid += 1
                labels.append({"question_id": len(labels) + 1, "image": s["image"], "text": text, "label": label})
                questions.append({"question_id": qid, "image": s["image"], "text": f"{text}\n{SHORT_ANSWER}",
                                  "category": split})
        _write_jsonl(os.path.join(out_dir, f"coco_pope_{split}.json"), labels)
    question_file = os.path.join(out_dir, "llava_pope_test.jsonl")
    _write_jsonl(question_file, questions)
    return {"question_file": question_file, "annotation_dir": out_dir, "n": len(questions)}


def write_gqa(test_scenes: list[dict], out_dir: str) -> dict:
    """Every unambiguous short-answer question of each held-out scene, GQA style: a LLaVA question
    file and a testdev_balanced_questions.json-like {question_id: {"answer", ...}} dict; the
    question type goes into "types" as GQA's "detailed" type."""
    os.makedirs(out_dir, exist_ok=True)
    questions, annotations = [], {}
    for s in test_scenes:
        for k, item in enumerate(scene_questions(s)):
            qid = f"{s['index']:06d}-{k}"
            questions.append({"question_id": qid, "image": s["image"], "text": f"{item['question']}\n{SHORT_ANSWER}"})
            annotations[qid] = {"question": item["question"], "answer": item["answer"], "imageId": s["image"],
                                "types": {"detailed": item["type"]}}
    question_file = os.path.join(out_dir, "llava_gqa_testdev_balanced.jsonl")
    annotation_file = os.path.join(out_dir, "testdev_balanced_questions.json")
    _write_jsonl(question_file, questions)
    with open(annotation_file, "w") as f:
        json.dump(annotations, f, indent=1)
    return {"question_file": question_file, "annotation_file": annotation_file, "n": len(questions)}


MMBENCH_COLUMNS = ("index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "split", "image")


def write_mmbench(test_scenes: list[dict], world_dir: str, out_dir: str, seed: int = 0) -> dict:
    """One four-option question per held-out scene (type drawn per scene), MMBench's dev TSV with
    the PNG inlined as base64. The right letter cycles A, B, C, D over the questions, so a model
    that always gives one letter scores the 25 % chance level (MMBench's circular evaluation
    removes that bias; this single-pass set balances it instead)."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "mmbench_dev.tsv")
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(MMBENCH_COLUMNS)
        for i, s in enumerate(test_scenes):
            rng = random.Random(f"{seed}-mmbench-{s['index']}")
            item = rng.choice(scene_questions(s))
            options, answer = multiple_choice(item, rng)
            target = i % len(MC_LETTERS)
            options[answer], options[target] = options[target], options[answer]
            answer = target
            with open(os.path.join(world_dir, s["image"]), "rb") as image:
                b64 = base64.b64encode(image.read()).decode("ascii")
            writer.writerow([i, item["question"], "", *options, MC_LETTERS[answer], item["type"], "attribute", "dev", b64])
    return {"question_file": path, "n": len(test_scenes)}


def write_benchmarks(world_dir: str, out_dir: str, n_test: int, n_train: int, seed: int = 0) -> dict:
    test = W.read_scenes(world_dir, "test")[:n_test]
    train = W.read_scenes(world_dir, "train")[:n_train]
    return {"pope": write_pope(test, train, os.path.join(out_dir, "pope"), seed),
            "gqa": write_gqa(test, os.path.join(out_dir, "gqa")),
            "mmbench": write_mmbench(test, world_dir, os.path.join(out_dir, "mmbench"), seed),
            "image_folder": world_dir}


# ---------------------------------------------------------------------------------------------
# chance levels

def gqa_chance(annotation_file: str) -> dict:
    """Two floors for the GQA-style accuracy (percent): a uniform guess within each question's
    type (1/#answers of the type, averaged over the questions) and the majority-class rate (the
    most frequent answer of each type on this set, always given: the best blind answerer)."""
    with open(annotation_file) as f:
        annotations = json.load(f)
    by_type: dict[str, Counter] = {}
    for ann in annotations.values():
        by_type.setdefault(ann["types"]["detailed"], Counter())[ann["answer"]] += 1
    n = len(annotations)
    uniform = sum(1.0 / len(ANSWER_SPACES[t]) * sum(c.values()) for t, c in by_type.items()) / n
    majority = sum(max(c.values()) for c in by_type.values()) / n
    return {"uniform": 100.0 * uniform, "majority": 100.0 * majority}
