"""The chain's procedural data: questions agree with the scene attributes, the benchmark files
parse with eval_mllm's question readers and score with its scorers (100 when answered from the
labels, 0 when answered wrongly), and the training conversations survive LLaVA's v1 label
masking with the tokenizer the chain trains."""

import base64
import io
import json
import os
import re
from collections import Counter

import pytest
from PIL import Image

from clipmoe_demo import world as W
from clipmoe_demo.chain import data as D
from eval_mllm.questions import read_questions
from eval_mllm.scorers import gqa, mmbench, pope


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("world"))
    W.write_world(root, W.WorldSettings(image_size=32, n_train=40, n_test=15))
    return root


@pytest.fixture(scope="module")
def bench(world, tmp_path_factory):
    return D.write_benchmarks(world, str(tmp_path_factory.mktemp("bench")), n_test=15, n_train=40)


def _group_named(scene, words):
    """The groups whose shape (or plural) and, if named, colour occur in the question's words."""
    found = []
    for g in scene["groups"]:
        shape_named = g["shape"] in words or W.PLURALS[g["shape"]] in words
        if shape_named and (g["colour"] in words or not any(c in words for c in W.COLOURS)):
            found.append(g)
    return found


def test_questions_agree_with_scene_attributes(world):
    n = 0
    for scene in W.read_scenes(world, "train") + W.read_scenes(world, "test"):
        for item in D.scene_questions(scene):
            words = re.findall(r"[a-z]+", item["question"].lower())
            n += 1
            if item["type"] == "shape":  # "What shape is the red object?": the one group of that colour
                groups = [g for g in scene["groups"] if g["colour"] in words]
                assert len(groups) == 1 and groups[0]["shape"] == item["answer"], (scene, item)
                continue
            groups = _group_named(scene, words)
            assert len(groups) == 1, (scene, item)  # unambiguous
            g = groups[0]
            expected = {"colour": g["colour"], "count": D.COUNT_ANSWERS[g["count"]], "position": g["region"]}[item["type"]]
            assert item["answer"] == expected, (scene, item)
            assert item["answer"] in D.ANSWER_SPACES[item["type"]]
    assert n > 100


def test_pope_labels_and_negatives(world, bench):
    scenes = {s["image"]: s for s in W.read_scenes(world, "test")}
    train = W.read_scenes(world, "train")
    frequency = D.pair_frequencies(train)
    for split in D.POPE_SPLITS:
        with open(os.path.join(bench["pope"]["annotation_dir"], f"coco_pope_{split}.json")) as f:
            labels = [json.loads(line) for line in f]
        assert [r["question_id"] for r in labels] == list(range(1, len(labels) + 1))
        per_image, negatives = {}, {}
        for r in labels:
            colour, shape = re.match(r"Is there an? (\w+) (\w+) in the image\?$", r["text"]).groups()
            present = D.present_pairs(scenes[r["image"]])
            assert (r["label"] == "yes") == ((colour, shape) in present), r
            per_image.setdefault(r["image"], []).append(r["label"])
            if split == "adversarial" and r["label"] == "no":  # a near miss of a present group
                assert any(colour == c or shape == s for c, s in present), r
            if r["label"] == "no":
                negatives.setdefault(r["image"], set()).add((colour, shape))
        assert all(v.count("yes") == v.count("no") for v in per_image.values())  # balanced: chance = 50
        if split == "popular":  # the most frequent absent pairs: none left out is more frequent
            for image, chosen in negatives.items():
                rest = [p for p in D.ALL_PAIRS if p not in chosen and p not in D.present_pairs(scenes[image])]
                assert min(frequency[p] for p in chosen) >= max(frequency[p] for p in rest), image


def _write_answers(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps({"question_id": q, "text": text, **extra}) + "\n" for q, text, extra in rows)


def test_files_parse_and_score(bench, tmp_path):
    # POPE: answers from the labels score 100, flipped ones 0
    questions = read_questions(bench["pope"]["question_file"])
    assert len(questions) == bench["pope"]["n"] and all(q.image for q in questions)
    labels = {}
    for split in D.POPE_SPLITS:
        with open(os.path.join(bench["pope"]["annotation_dir"], f"coco_pope_{split}.json")) as f:
            for line in f:
                r = json.loads(line)
                labels[(split, r["image"], r["text"])] = r["label"]
    with open(bench["pope"]["question_file"]) as f:
        raw = [json.loads(line) for line in f]
    truth = {r["question_id"]: labels[(r["category"], r["image"], r["text"].split("\n")[0])] for r in raw}
    right, wrong = tmp_path / "pope_right.jsonl", tmp_path / "pope_wrong.jsonl"
    _write_answers(right, [(q, "Yes" if y == "yes" else "No", {}) for q, y in truth.items()])
    _write_answers(wrong, [(q, "No" if y == "yes" else "Yes", {}) for q, y in truth.items()])
    args = (bench["pope"]["annotation_dir"], bench["pope"]["question_file"])
    assert pope.score(*args, str(right))["accuracy_mean"] == 100.0
    assert pope.score(*args, str(wrong))["accuracy_mean"] == 0.0

    # GQA-style
    with open(bench["gqa"]["annotation_file"]) as f:
        annotations = json.load(f)
    questions = read_questions(bench["gqa"]["question_file"])
    assert {str(q.question_id) for q in questions} == set(annotations)
    _write_answers(right, [(q, a["answer"].capitalize() + ".", {}) for q, a in annotations.items()])
    _write_answers(wrong, [(q, "purple" if a["answer"] != "purple" else "red", {}) for q, a in annotations.items()])
    assert gqa.score(bench["gqa"]["question_file"], str(right), bench["gqa"]["annotation_file"])["accuracy"] == 100.0
    assert gqa.score(bench["gqa"]["question_file"], str(wrong), bench["gqa"]["annotation_file"])["accuracy"] == 0.0

    # MMBench-style: the reader builds the prompt the training data use, the image is the world's PNG
    questions = read_questions(bench["mmbench"]["question_file"])
    assert len(questions) == bench["mmbench"]["n"]
    import csv

    with open(bench["mmbench"]["question_file"], newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    for q, row in zip(questions, rows):
        options = [row[c] for c in "ABCD"]
        assert q.text == D.mc_text(row["question"], options)
        assert row[row["answer"]] in D.ANSWER_SPACES[row["category"]]
        assert Image.open(io.BytesIO(base64.b64decode(q.image_b64))).size == (32, 32)
    letters = Counter(r["answer"] for r in rows)  # balanced: one constant letter scores chance
    assert max(letters.values()) - min(letters.values()) <= 1 and len(letters) == 4
    _write_answers(right, [(int(r["index"]), r["answer"], {"round_id": 0}) for r in rows])
    _write_answers(wrong, [(int(r["index"]), "ABCD"[("ABCD".index(r["answer"]) + 1) % 4], {"round_id": 0}) for r in rows])
    assert mmbench.score(bench["mmbench"]["question_file"], str(right))["accuracy"] == 100.0
    assert mmbench.score(bench["mmbench"]["question_file"], str(wrong))["accuracy"] == 0.0


def test_gqa_chance_levels(tmp_path):
    path = tmp_path / "ann.json"
    ann = {"1": {"answer": "red", "types": {"detailed": "colour"}}, "2": {"answer": "red", "types": {"detailed": "colour"}},
           "3": {"answer": "blue", "types": {"detailed": "colour"}}, "4": {"answer": "two", "types": {"detailed": "count"}}}
    path.write_text(json.dumps(ann))
    chance = D.gqa_chance(str(path))
    assert chance["uniform"] == pytest.approx(100 * (3 / 6 + 1 / 4) / 4)
    assert chance["majority"] == pytest.approx(100 * (2 + 1) / 4)


def test_training_conversations_pass_llava_label_masking(world, tmp_path):
    """Every stage-2 record keeps its labels under LLaVA's preprocess_v1 with the chain's
    tokenizer (no "tokenization mismatch") and fits the scripts' 256-token tiny mode."""
    import contextlib
    import copy

    from llava import conversation
    from transformers import AutoTokenizer

    from llava_integration.train import prepare

    T = prepare()  # LLaVA's training module as the training entry point sets it up

    from clipmoe_demo.chain import language_model, llava_runs

    plan = llava_runs.make_plan(quick=True)
    paths = D.write_training_data(world, str(tmp_path / "data"), n_train=40)
    llm = str(tmp_path / "llm")
    language_model.build_untrained(llm, paths, plan)
    tokenizer = AutoTokenizer.from_pretrained(llm, use_fast=False)
    tokenizer.pad_token, tokenizer.model_max_length = tokenizer.unk_token, 256
    T.conversation_lib.default_conversation = conversation.conv_templates["vicuna_v1"]
    with open(paths["finetune"]) as f:
        records = json.load(f)
    args = type("DataArgs", (), {"is_multimodal": True, "mm_use_im_start_end": False})()
    image_tokens = (32 // 4) ** 2  # the quick demo's tower: 32-px images, 4-px patches
    for record in records:
        sources = T.preprocess_multimodal([copy.deepcopy(record["conversations"])], args)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            batch = T.preprocess_v1(sources, tokenizer, has_image=True)
        assert "mismatch" not in out.getvalue(), (record, out.getvalue())
        labels = batch["labels"][0]
        n_answers = sum(1 for t in record["conversations"] if t["from"] == "gpt")
        assert int((labels == tokenizer.eos_token_id).sum()) == n_answers  # every answer ends trained
        assert len(batch["input_ids"][0]) - 1 + image_tokens <= 256


def test_each_conversation_asks_yes_no_multiple_choice_and_short(world):
    """Per scene: one existence question answered "Yes" (a present pair), one answered "No" (an
    absent pair), one lettered multiple choice and one short answer, in a seeded random order."""
    scenes = W.read_scenes(world, "train")
    records = D.finetune_records(scenes, seed=0)
    assert records == D.finetune_records(scenes, seed=0) and records != D.finetune_records(scenes, seed=1)
    letters, firsts = Counter(), Counter()
    for scene, record in zip(scenes, records, strict=True):
        turns = record["conversations"]
        humans, answers = [t["value"] for t in turns[::2]], [t["value"] for t in turns[1::2]]
        assert [t["from"] for t in turns] == ["human", "gpt"] * 4
        assert humans[0].startswith("<image>\n") and not any("<image>" in h for h in humans[1:])
        kinds = []
        for human, answer in zip(humans, answers):
            question = human.removeprefix("<image>\n").split("\n")[0]
            match = re.fullmatch(r"Is there an? (\w+) (\w+) in the image\?", question)
            if match:
                present = tuple(match.groups()) in D.present_pairs(scene)
                assert answer == ("Yes" if present else "No")
                kinds.append(answer)
            elif human.endswith(D.MULTIPLE_CHOICE):
                kinds.append("mc")
                letters[answer] += 1
            else:
                assert human.endswith(D.SHORT_ANSWER) and answer in D.ANSWER_SPACES[
                    next(i["type"] for i in D.scene_questions(scene) if i["question"] == question)]
                kinds.append("short")
        assert sorted(kinds) == ["No", "Yes", "mc", "short"]
        firsts[kinds[0]] += 1
    assert set(letters) == set(D.MC_LETTERS) and len(firsts) >= 3  # letters and turn order vary
