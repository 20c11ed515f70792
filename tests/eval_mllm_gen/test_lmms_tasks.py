"""The local lmms-eval task configs: lmms-eval indexes them, and their prompts and scoring follow
the LLaVA-1.5 protocol (the same prompts as `eval_mllm generate`)."""

from __future__ import annotations

import importlib.util
import os

import pytest

from eval_mllm.questions import read_questions

from .conftest import image_b64
from .test_questions import write_mmbench

TASKS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "eval_mllm", "lmms_tasks")
NAMES = {"pope_local", "mme_local", "textvqa_val_ocr_local", "gqa_local", "scienceqa_img_local",
         "mmbench_en_dev_local"}


@pytest.fixture(scope="module")
def utils():
    spec = importlib.util.spec_from_file_location("lmms_tasks_utils", os.path.join(TASKS, "utils.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_lmms_eval_indexes_our_tasks():
    from lmms_eval.tasks import TaskManager

    manager = TaskManager(include_path=TASKS)
    assert NAMES <= set(manager.all_tasks)


def test_pope_parsing_and_mean_over_splits(utils):
    docs = [("adversarial", "yes", "Yes, there is."), ("adversarial", "no", "No, there is not."),
            ("random", "yes", "No."), ("random", "no", "no")]
    results = [utils.pope_process_results({"category": c, "answer": a}, [pred])["pope_f1"] for c, a, pred in docs]
    assert [r["pred"] for r in results] == ["yes", "no", "no", "no"]
    # adversarial: acc 100, F1 100; random: acc 50, no predicted positives -> F1 undefined (skipped)
    assert utils.pope_aggregate_accuracy(results) == pytest.approx(75.0)
    assert utils.pope_aggregate_f1(results) == pytest.approx(100.0)


def test_mme_scores_per_subtask(utils):
    docs = [("existence", "img1", "Yes", "Yes"), ("existence", "img1", "No", "No"),
            ("count", "img2", "Yes", "No"), ("count", "img2", "No", "No"),
            ("code_reasoning", "img3", "Yes", "yes")]
    results = [utils.mme_process_results({"category": c, "question_id": q, "answer": a}, [p])["mme_perception_score"]
               for c, q, a, p in docs]
    # existence: acc 100 + acc+ 100; count: acc 50 + acc+ 0; cognition: 100 + 100
    assert utils.mme_aggregate_perception(results) == pytest.approx(250.0)
    assert utils.mme_aggregate_cognition(results) == pytest.approx(200.0)


def test_textvqa_prompt_has_ocr_tokens(utils):
    text = utils.textvqa_doc_to_text({"question": "what brand is it?", "ocr_tokens": ["coca", "cola"]},
                                     {"ocr": True})
    assert text == ("What brand is it?\nReference OCR token: coca, cola\n"
                    "Answer the question using a single word or phrase.")
    score = utils.textvqa_process_results({"answers": ["coca cola"] * 10}, ["Coca Cola."])["textvqa_accuracy"]
    assert score == pytest.approx(100.0)


def test_scienceqa_prompt_and_letter(utils):
    doc = {"hint": "", "question": "Which is a mammal?", "choices": ["frog", "cat", "ant"], "answer": 1}
    assert utils.sqa_doc_to_text(doc) == ("Context: N/A\nQuestion: Which is a mammal?\nOptions: (A) frog (B) cat "
                                          "(C) ant\nAnswer with the option's letter from the given choices directly.")
    assert utils.sqa_process_results(doc, ["B"])["sqa_img_accuracy"] == 100.0
    assert utils.sqa_process_results(doc, ["A"])["sqa_img_accuracy"] == 0.0
    # A letter beyond the choices is wrong, even where the (corrupt) answer index points there.
    assert utils.sqa_process_results(dict(doc, answer=3), ["D"])["sqa_img_accuracy"] == 0.0


def test_mmbench_prompt_matches_generate(utils, tmp_path):
    row = {"index": 5, "question": "What colour?", "hint": "A picture.", "A": "red", "B": "green",
           "C": "nan", "answer": "B", "image": image_b64()}
    path = write_mmbench(tmp_path / "m.tsv", [row])
    assert utils.mmbench_doc_to_text(row) == read_questions(path)[0].text
    assert utils.mmbench_process_results(row, ["B."])["mmbench_accuracy"] == 100.0
    assert utils.mmbench_process_results(row, ["green"])["mmbench_accuracy"] == 100.0
    assert utils.mmbench_process_results(row, ["A"])["mmbench_accuracy"] == 0.0
