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
        assert (len(by_kind["existence"]), len(by_kind["choice"]), len(by_kind["short"])) == (4, 6, 2)
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


def test_the_language_model_trains_the_same_bit_for_bit_with_its_threads_switched_at_a_fixed_step(world_dir, data_paths, tmp_path):
    """The chain trains the LM in a thread of its own beside the DMU demo, on one torch thread and on
    two from a fixed step (a switch at a step set by timing changed the model on the CI's CPU): two
    trainings from the same initialisation give the same model bit for bit, each ran on one thread,
    then two from the step, and the calling thread gets its count back. The full plan's LLM sizes,
    where torch's ops are large enough to be split between threads."""
    import shutil
    import threading

    from safetensors.torch import load_file

    plan = replace(llava_runs.make_plan(quick=False), lm_steps=8)
    init = str(tmp_path / "init")
    L.build_untrained(init, data_paths, plan)
    texts = L.training_texts(world_dir, plan.lm_steps * plan.batch, plan.seed)

    def train(name):
        out, threads = str(tmp_path / name), []
        shutil.copytree(init, out)
        result = {}

        def run():
            torch.set_num_threads(1)  # torch's thread count is per thread, as in the chain
            result["history"] = L.train_language_model(
                out, texts, plan.lm_steps, plan.batch, plan.lm_lr, plan.seed, progress_every=1e9,
                after_step=lambda step, model: threads.append(torch.get_num_threads()), threads_from=(4, 2))
            result["threads_after"] = torch.get_num_threads()

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        assert result["threads_after"] == 1
        return result["history"], load_file(f"{out}/model.safetensors"), threads

    first_history, first_weights, first_threads = train("first")
    history, weights, threads = train("second")
    assert first_threads == threads == [1, 1, 1, 2, 2, 2, 2, 2]
    assert history == first_history and len(history) == 1
    assert first_weights.keys() == weights.keys()
    assert all(torch.equal(first_weights[k], weights[k]) for k in weights)


def test_the_thread_probe_finds_no_difference_between_equal_thread_counts(capsys):
    """scripts/demo_probes/lm_threads.py (what tells a user whether their CPU's thread count changes
    the LM): its control, the same count twice, must report every output and gradient equal."""
    import json

    from .. import probe_script

    probe_script("lm_threads").main(["--threads", "1", "1", "--steps", "1", "--tokens", "16"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["threads"] == [1, 1] and report["logits_equal"] and report["loss_equal"]
    assert report["weight_gradients_differing"] == [] and report["weight_gradients"] > 10


def test_right_padded_batches_need_no_attention_mask():
    """The LM trains on right-padded batches without an attention mask (_collate): the batch's loss
    must be that of each row alone, weighted by the tokens it predicts (an independent reference:
    no padding at all), and padding must never be a label."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64))
    rows = [torch.randint(3, 50, (n,)).tolist() for n in (17, 9, 4)]
    ids, labels = L._collate(rows)
    assert ids.shape == labels.shape == (3, 17)
    assert (labels[1, 9:] == -100).all() and (labels[2, 4:] == -100).all() and torch.equal(labels[0], ids[0])
    with torch.no_grad():
        batch_loss = model(input_ids=ids, labels=labels).loss
        alone = [model(input_ids=torch.tensor([r]), labels=torch.tensor([r])).loss for r in rows]
    predicted = [len(r) - 1 for r in rows]  # a row's first token is not predicted
    expected = sum(loss * n for loss, n in zip(alone, predicted)) / sum(predicted)
    torch.testing.assert_close(batch_loss, expected)


def test_the_answer_weight_marks_each_answer_and_weighs_only_its_tokens(world_dir, data_paths, tmp_path):
    """lm_variant.py --answer-weight K: answer_mask marks exactly the assistant's answers of a chain
    text, each with its "</s>" (checked against the text's own turns), and one cut off to the row's
    end; weighted_loss is the model's own loss with every weight 1 and, with the answers at 10
    (answer_weights, right-padded batch), the per-token losses averaged with those weights by hand;
    training reports that loss."""
    import numpy as np
    from transformers import AutoTokenizer, LlamaForCausalLM

    plan = replace(llava_runs.make_plan(quick=True), lm_steps=2, batch=4)
    out = str(tmp_path / "llm")
    L.build_untrained(out, data_paths, plan)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assistant = tokenizer.convert_tokens_to_ids("\u2581ASSISTANT")
    assert assistant != tokenizer.unk_token_id  # one piece of the chain's vocabulary
    texts = L.training_texts(world_dir, 2, seed=0)
    ids = np.asarray(tokenizer(texts[0])["input_ids"])
    mask = L.answer_mask(ids, assistant, tokenizer.eos_token_id)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    answers = [tokenizer.decode(ids[a:b]) for a, b in zip(edges[::2], edges[1::2])]
    assert answers == [answer + "</s>" for _, answer in turns(texts[0])]
    cut = int(edges[1]) - 1  # inside the first answer, before its "</s>"
    assert L.answer_mask(ids[:cut], assistant, tokenizer.eos_token_id).sum() == cut - edges[0]

    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(out)
    rows = [tokenizer(t)["input_ids"] for t in texts]
    batch_ids, labels = L._collate(rows)
    weights = L.answer_weights(batch_ids, assistant, tokenizer.eos_token_id, 10.0)
    assert sorted(weights.unique().tolist()) == [1.0, 10.0]
    with torch.no_grad():
        logits = model(input_ids=batch_ids).logits
        torch.testing.assert_close(L.weighted_loss(logits, labels, torch.ones(batch_ids.shape)),
                                   model(input_ids=batch_ids, labels=labels).loss)
        total = count = 0.0
        for i, row in enumerate(rows):
            logp = torch.log_softmax(logits[i], dim=-1)
            for t in range(1, len(row)):  # token t predicted from the positions before it
                total += -logp[t - 1, row[t]] * weights[i, t]
                count += weights[i, t]
        torch.testing.assert_close(L.weighted_loss(logits, labels, weights), total / count)

    def trained(weight):
        folder = str(tmp_path / f"w{weight}")
        L.build_untrained(folder, data_paths, plan)
        return L.train_language_model(folder, texts * 4, 2, 4, plan.lm_lr, 0, answer_weight=weight)

    assert trained(1.0) != trained(10.0)
