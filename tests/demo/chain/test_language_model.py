"""The chain's language model: trained by code on the world's text, in LLaVA's template, and
reused by a rerun with the same plan."""

import json
from dataclasses import replace

import pytest
import torch

from clipmoe_demo import world as W
from clipmoe_demo.chain import data as D
from clipmoe_demo.chain import language_model as L
from clipmoe_demo.chain import llava_runs


@pytest.fixture(scope="module")
def data_paths(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("world"))
    W.write_world(root, W.WorldSettings(image_size=32, n_train=40, n_test=4))
    return D.write_training_data(root, str(tmp_path_factory.mktemp("data")), n_train=40)


def test_texts_are_captions_and_vicuna_conversations_without_images(data_paths):
    texts = L.conversation_texts(data_paths)
    with open(data_paths["finetune"]) as f:
        finetune = json.load(f)
    assert len(texts) == 2 * len(finetune)
    conversation = texts[-1]
    assert conversation.startswith("A chat between") and " USER: " in conversation and " ASSISTANT: " in conversation
    assert "<image>" not in conversation and conversation.endswith("</s>")
    last_answer = finetune[-1]["conversations"][-1]["value"]
    assert conversation.endswith(f"ASSISTANT: {last_answer}</s>")
    # the image's place holds the scene's caption: the answers follow from the context
    with open(data_paths["pretrain"]) as f:
        caption = {r["id"]: r["conversations"][1]["value"] for r in json.load(f)}[finetune[-1]["id"]]
    first_question = finetune[-1]["conversations"][0]["value"].removeprefix("<image>\n")
    assert f" USER: {caption}\n{first_question} ASSISTANT: " in conversation


def test_training_lowers_the_loss_saves_the_model_and_a_rerun_reuses_it(data_paths, tmp_path):
    from transformers import LlamaForCausalLM

    plan = replace(llava_runs.make_plan(quick=True), lm_steps=30, batch=8)
    out = str(tmp_path / "llm")
    first = L.build_language_model(out, data_paths, plan)
    history = first["history"]
    assert not first["reused"] and history[-1]["step"] == 30
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]

    trained = LlamaForCausalLM.from_pretrained(out)
    torch.manual_seed(plan.seed)
    fresh = LlamaForCausalLM(trained.config)  # a random init like the one build_llm saved
    assert not torch.equal(trained.model.embed_tokens.weight, fresh.model.embed_tokens.weight)

    again = L.build_language_model(out, data_paths, plan)
    assert again["reused"] and again["history"] == history
    changed = L.build_language_model(out, data_paths, replace(plan, lm_steps=20))
    assert not changed["reused"] and changed["history"][-1]["step"] == 20
