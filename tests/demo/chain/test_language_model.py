"""The chain's language model: trained by code on the world's text, in LLaVA's template, and
reused by a rerun with the same plan."""

from dataclasses import replace

import pytest
import torch

from clipmoe_demo import world as W
from clipmoe_demo.chain import data as D
from clipmoe_demo.chain import language_model as L
from clipmoe_demo.chain import llava_runs

from ..text_checks import assert_answered_as_the_scene_says, kinds, turns


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("world"))
    W.write_world(root, W.WorldSettings(image_size=32, n_train=40, n_test=4))
    return root


@pytest.fixture(scope="module")
def data_paths(world_dir, tmp_path_factory):
    return D.write_training_data(world_dir, str(tmp_path_factory.mktemp("data")), n_train=40)


def test_texts_are_dense_conversations_about_text_only_scenes(world_dir):
    texts = L.training_texts(world_dir, n_scenes=30, seed=0)
    assert len(texts) == 30
    settings = W.read_settings(world_dir)
    assert settings == W.WorldSettings(image_size=32, n_train=40, n_test=4)
    scenes = W.text_scenes(settings, 30)
    train_captions = {s["caption"] for s in W.read_scenes(world_dir, "train")}
    assert sum(s["caption"] in train_captions for s in scenes) < 10  # their own scenes, not the images' again
    for scene, text in zip(scenes, texts):
        assert text.startswith("A chat between") and "<image>" not in text and text.endswith("</s>")
        asked = turns(text)
        by_kind = kinds(asked)
        assert (len(by_kind["existence"]), len(by_kind["choice"]), len(by_kind["short"])) == (4, 3, 0)
        assert sorted(a for _, a in by_kind["existence"]) == ["No", "No", "Yes", "Yes"]
        assert_answered_as_the_scene_says(scene, asked)
    assert texts == L.training_texts(world_dir, n_scenes=30, seed=0)  # seeded
    assert texts != L.training_texts(world_dir, n_scenes=30, seed=1)


def test_training_lowers_the_loss_saves_the_model_and_a_rerun_reuses_it(world_dir, data_paths, tmp_path):
    from transformers import LlamaForCausalLM

    plan = replace(llava_runs.make_plan(quick=True), lm_steps=30, batch=8)
    out = str(tmp_path / "llm")
    first = L.build_language_model(out, world_dir, data_paths, plan)
    history = first["history"]
    assert not first["reused"] and history[-1]["step"] == 30
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]

    trained = LlamaForCausalLM.from_pretrained(out)
    torch.manual_seed(plan.seed)
    fresh = LlamaForCausalLM(trained.config)  # a random init like the one build_llm saved
    assert not torch.equal(trained.model.embed_tokens.weight, fresh.model.embed_tokens.weight)

    again = L.build_language_model(out, world_dir, data_paths, plan)
    assert again["reused"] and again["history"] == history
    changed = L.build_language_model(out, world_dir, data_paths, replace(plan, lm_steps=20))
    assert not changed["reused"] and changed["history"][-1]["step"] == 20


class SetAfter:
    """A threading.Event stand-in that reads as set from its (k+1)-th check on: the DMU demo
    finishing while the LM is at step k+1."""

    def __init__(self, k):
        self.checks, self.k = 0, k

    def is_set(self):
        self.checks += 1
        return self.checks > self.k


def test_more_threads_midway_give_the_same_model_bit_for_bit(world_dir, data_paths, tmp_path):
    """The chain gives the LM the demo's core when the demo finishes, at a step that depends on
    timing: that must not change the model. The full plan's LLM sizes, so that torch's ops are
    large enough to be split between threads."""
    import shutil
    import threading

    from safetensors.torch import load_file

    plan = replace(llava_runs.make_plan(quick=False), lm_steps=8)
    init = str(tmp_path / "init")
    L.build_untrained(init, data_paths, plan)
    texts = L.training_texts(world_dir, plan.lm_steps * plan.batch, plan.seed)

    def train(name, more_threads):
        out, lines = str(tmp_path / name), []

        def log(line):
            lines.append((line, torch.get_num_threads()))

        shutil.copytree(init, out)
        result = {}
        # in a thread of its own, as in the chain (torch's thread count is per thread)
        thread = threading.Thread(target=lambda: result.update(history=L.train_language_model(
            out, texts, plan.lm_steps, plan.batch, plan.lm_lr, plan.seed, log=log, progress_every=1e9,
            more_threads=more_threads)))
        thread.start()
        thread.join()
        return result["history"], load_file(f"{out}/model.safetensors"), lines

    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one_history, one_weights, one_lines = train("one", None)
        history, weights, lines = train("switched", (SetAfter(3), 2))
    finally:
        torch.set_num_threads(threads_before)
    # the baseline really trained on one thread (its progress line's count), the other switched
    assert one_lines and all(n == 1 for _, n in one_lines)
    assert ("[chain] language model: 2 threads from step 4", 2) in lines
    assert history == one_history
    assert one_weights.keys() == weights.keys()
    assert all(torch.equal(one_weights[k], weights[k]) for k in weights)
