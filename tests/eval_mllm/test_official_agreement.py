"""Our scorers agree exactly with the official evaluation on the same randomized files.

LLaVA's installed scripts (eval_science_qa.py, eval_pope.py, eval_textvqa.py with
m4c_evaluator.py) run for real, as ``__main__``; the other benchmarks are compared with the
independent re-implementations of their official rules in ``official_rules.py``.  The random
answer texts are drawn to hit every parsing branch of each rule.
"""

import contextlib
import io
import json
import os
import random
import runpy
import sys
from pathlib import Path

import pytest

llava_eval = pytest.importorskip("llava.eval.m4c_evaluator")

from eval_mllm.scorers import (
    gqa,
    mmbench,
    mme,
    ocrbench,
    pope,
    scienceqa,
    textvqa,
    vizwiz,
    vqav2,
)

from . import official_rules as official

LLAVA_EVAL = os.path.dirname(llava_eval.__file__)
SEEDS = [0, 1, 2]


def run_llava_script(name, *argv):
    """Run LLaVA's llava/eval/<name> as a script; returns its stdout."""
    out = io.StringIO()
    old = sys.argv
    sys.argv = [name, *map(str, argv)]
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(os.path.join(LLAVA_EVAL, name), run_name="__main__")
    finally:
        sys.argv = old
    return out.getvalue()


def write_lines(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


# ------------------------------------------------------------------ ScienceQA
SQA_TEXTS = [
    "{L}", "{l}", "{X}", "{L}\n", " {L}", "", "{L}. because", "{L}.", "{L}. ", "{L}.x",
    "The answer is {L}.", "The answer is {L}", "The answer is {L}\nso", "so The answer is {L}!",
    "The answer is {L}. The answer is {X}.", "The answer is {L}. The answer is {L}.",
    "the answer is {L}.", "{X}\nThe answer is {L}.", "The answer is {l}.", "The answer is Z.",
    "Answer: {L}", "({L})", "{L}\n. x", "{L}) cat",
]


def test_scienceqa_agrees_with_llava_eval_science_qa(tmp_path):
    for seed in SEEDS:
        rng = random.Random(seed)
        problems, answers, pids = {}, [], []
        for i in range(80):
            pid = str(1000 + i)
            n = rng.randint(2, 5)
            problems[pid] = {"question": "?", "choices": [f"c{j}" for j in range(n)],
                             "answer": rng.randrange(n), "image": rng.choice([None, "image.png"]),
                             "split": "test"}
            pids.append(pid)
            if rng.random() < 0.15:
                continue  # unanswered: wrong, and outside IMG (no prompt)
            letter = rng.choice("ABCDE"[:n] if rng.random() < 0.8 else "ABCDEFZ")
            other = rng.choice("ABCDE")
            text = rng.choice(SQA_TEXTS).format(L=letter, l=letter.lower(), X=other)
            prompt = ("<image>\n" if problems[pid]["image"] else "") + "Question: ?\nOptions: ..."
            answers.append({"question_id": pid, "prompt": prompt, "text": text,
                            "answer_id": "x", "model_id": "m", "metadata": {}})
        # ids answered again further down (an appended rerun): LLaVA's dict keeps the last
        for again in rng.sample(answers, 8):
            letter = rng.choice("ABCDE")
            answers.append(dict(again, text=rng.choice(SQA_TEXTS).format(L=letter, l=letter.lower(), X="A")))
        base = tmp_path / f"sqa{seed}"
        base.mkdir()
        (base / "problems.json").write_text(json.dumps(problems))
        (base / "pid_splits.json").write_text(json.dumps({"test": pids}))
        result = write_lines(base / "answers.jsonl", answers)
        run_llava_script("eval_science_qa.py", "--base-dir", base, "--result-file", result,
                         "--output-file", base / "out.json", "--output-result", base / "res.json")
        official_res = json.loads((base / "res.json").read_text())
        detail = json.loads((base / "out.json").read_text())
        img_right = sum(x["is_multimodal"] for x in detail["correct"])
        img_total = img_right + sum(x["is_multimodal"] for x in detail["incorrect"])

        ours = scienceqa.score(str(base), result)
        assert ours["accuracy"] == pytest.approx(official_res["acc"], abs=1e-12)
        assert ours["n_correct"] == official_res["correct"]
        assert (ours["n_img_correct"], ours["n_img"]) == (img_right, img_total)
        # per problem: the letter we parse is the one LLaVA parsed
        for x in detail["correct"] + detail["incorrect"]:
            if x["pred"] != "FAILED":
                ours_letter = scienceqa.parse_letter(x["pred"]) or "FAILED"
                assert ours_letter == x["parsed_ans"], x["pred"]


# ------------------------------------------------------------------ POPE
POPE_TEXTS = ["Yes", "No", "yes.", "no.", "No, there is not.", "NO", "not sure", "Yes, no doubt",
              "There is no dog.", "no.Yes", "\nNo", "I don't know", "", "None", "yes,no",
              "Yes. No.", "Not at all", "no,", "Nope", "It is not there", "Yes\nno"]


def _pope_metrics(stdout):
    """{category: {accuracy, precision, recall, f1, yes_ratio}} from eval_pope.py's output."""
    out, cat = {}, None
    names = {"Accuracy": "accuracy", "Precision": "precision", "Recall": "recall",
             "F1 score": "f1", "Yes ratio": "yes_ratio"}
    for line in stdout.splitlines():
        if line.startswith("Category: "):
            cat = line.split(",")[0][len("Category: "):]
            out[cat] = {}
        for label, key in names.items():
            if line.startswith(label + ": "):
                out[cat][key] = float(line[len(label) + 2:])
    return out


def test_pope_agrees_with_llava_eval_pope(tmp_path):
    for seed in SEEDS:
        rng = random.Random(seed)
        ann = tmp_path / f"pope{seed}" / "coco"
        ann.mkdir(parents=True)
        questions, answers, qid = [], [], 0
        for cat in ("adversarial", "popular", "random"):
            labels = []
            for i in range(40):
                qid += 1
                label = "yes" if i == 0 else "no" if i == 1 else rng.choice(["yes", "no"])
                q = f"Is there a thing{i} in the image?"
                labels.append({"question_id": i + 1, "image": f"img{i}.jpg", "text": q,
                               "label": label})
                questions.append({"question_id": qid, "image": f"img{i}.jpg", "category": cat,
                                  "text": q + "\nAnswer the question using a single word or phrase."})
                text = "Yes" if i == 0 else rng.choice(POPE_TEXTS)  # a yes exists: no 0/0
                answers.append({"question_id": qid, "prompt": q, "text": text, "answer_id": "x",
                                "model_id": "m", "metadata": {}})
            write_lines(ann / f"coco_pope_{cat}.json", labels)
        qfile = write_lines(tmp_path / f"pope{seed}" / "q.jsonl", questions)
        result = write_lines(tmp_path / f"pope{seed}" / "a.jsonl", answers)
        official_m = _pope_metrics(run_llava_script("eval_pope.py", "--annotation-dir", ann,
                                                    "--question-file", qfile, "--result-file", result))
        ours = pope.score(str(ann), qfile, result)
        assert set(official_m) == set(ours["splits"])
        for cat, m in official_m.items():
            for key, value in m.items():
                assert ours["splits"][cat][key] == pytest.approx(100 * value, abs=1e-9), (cat, key)
        for a in answers:
            assert pope.parse_yes_no(a["text"]) in ("yes", "no")


# ------------------------------------------------------------------ TextVQA
TEXTVQA_GT = ["Coca Cola", "coca-cola", "coca cola", "two", "2", "the sign", "sign", "3.5",
              "yes", "STOP!", "stop", "don't", "dont", "1,000", "a b", "it's", "x-ray", "b b", "1 b",
              "let's", "somebody'd", "somebodyd"]
TEXTVQA_PRED = ["{g}", "{G}", "The {g}.", "{g}?", " {g} ", "{g}\n", "unanswerable", "two", "Two",
                "an {g}", "{g}!!", "({g})", "{g}, {g}",
                # punctuation whose rule looks at the incoming text, not at earlier edits
                ">;b>b`", "1{{b=/{{", "[1=a\"=", "{g}=\".!1}}!"]


def test_textvqa_agrees_with_llava_eval_textvqa(tmp_path, monkeypatch):
    captured = []
    evaluate = llava_eval.TextVQAAccuracyEvaluator.eval_pred_list
    monkeypatch.setattr(llava_eval.TextVQAAccuracyEvaluator, "eval_pred_list",
                        lambda self, preds: captured.append(evaluate(self, preds)) or captured[-1])
    for seed in SEEDS:
        rng = random.Random(seed)
        data, answers = [], []
        for i in range(50):
            image_id = f"{rng.getrandbits(48):012x}"
            question = f"What is written on Sign {i}?"
            gts = [rng.choice(TEXTVQA_GT) for _ in range(10)]
            data.append({"question_id": 30000 + i, "image_id": image_id, "question": question,
                         "answers": gts})
            if rng.random() < 0.1:
                continue
            ocr = ", ".join(rng.sample(TEXTVQA_GT, 3))
            prompt = rng.choice([
                f"{question}\nAnswer the question using a single word or phrase.",
                f"{question}\nReference OCR token: {ocr}\nAnswer the question using a single word or phrase.",
                f"Reference OCR token: {ocr}\n{question}\nAnswer the question using a single word or phrase."])
            g = rng.choice(gts)
            text = rng.choice(TEXTVQA_PRED).format(g=g, G=g.upper())
            answers.append({"question_id": image_id, "prompt": prompt, "text": text,
                            "answer_id": "x", "model_id": "m", "metadata": {}})
        folder = tmp_path / f"textvqa{seed}"
        folder.mkdir()
        ann = folder / "TextVQA_0.5.1_val.json"
        ann.write_text(json.dumps({"data": data}))
        result = write_lines(folder / "answers.jsonl", answers)
        run_llava_script("eval_textvqa.py", "--annotation-file", ann, "--result-file", result)
        ours = textvqa.score(str(ann), result)
        assert ours["n_scored"] == len(answers)
        assert ours["accuracy"] == pytest.approx(100 * captured[-1], abs=1e-9)


# ------------------------------------------------------------------ GQA
GQA_TEXTS = ["{a}", "{A}", "{a}.", "{a}..", "{a}. ", " {a}", "The {a}.", "{a}!", "no", "yes."]


def test_gqa_agrees_with_official_rules(tmp_path):
    for seed in SEEDS:
        rng = random.Random(seed)
        questions_json, qlines, answers = {}, [], []
        for i in range(60):
            qid = f"2{i:05d}"
            gold = rng.choice(["yes", "no", "red", "left", "the man", "table"])
            questions_json[qid] = {"answer": gold, "isBalanced": True, "question": "?"}
            qlines.append({"question_id": qid, "image": f"{i}.jpg", "text": "?"})
            a = rng.choice([gold, "blue", "Yes"])
            answers.append({"question_id": qid, "prompt": "?", "text":
                            rng.choice(GQA_TEXTS).format(a=a, A=a.upper())})
        for again in rng.sample(answers, 6):  # answered again: the later prediction wins
            answers.append(dict(again, text=rng.choice(["blue", "no", again["text"].upper()])))
        folder = tmp_path / f"gqa{seed}"
        folder.mkdir()
        ann = folder / "testdev_balanced_questions.json"
        ann.write_text(json.dumps(questions_json))
        result = write_lines(folder / "a.jsonl", answers)
        expected = official.gqa_accuracy(Path(result).read_text().splitlines(), questions_json)
        ours = gqa.score(write_lines(folder / "q.jsonl", qlines), result, str(ann))
        assert ours["accuracy"] == pytest.approx(expected, abs=1e-9)


# ------------------------------------------------------------------ MME
MME_TEXTS = ["Yes", "No", "yes.", "No, it is not.", " yes", "  yes", "Nope", "The answer is yes",
             "yes\tno"[:3], "YES", "noyes", "no ", "I think yes", "", "n", "Not", "Yes, no"]


def test_mme_agrees_with_official_calculation(tmp_path):
    for seed in SEEDS:
        rng = random.Random(seed)
        results_dir = tmp_path / f"mme{seed}"
        results_dir.mkdir()
        qlines, answers, qid = [], [], 0
        for subtask in rng.sample(mme.SUBTASKS, 5):
            rows = []
            for img in range(12):
                for gt in ("Yes", "No"):
                    qid += 1
                    text = rng.choice(MME_TEXTS)
                    name = f"{img}.jpg"
                    rows.append("\t".join([name, f"Is it {gt}?", gt, text]) + "\n")
                    qlines.append({"question_id": qid, "image": f"{subtask}/{name}",
                                   "text": f"Is it {gt}?", "category": subtask, "answer": gt})
                    answers.append({"question_id": qid, "prompt": "?", "text": text})
            (results_dir / f"{subtask}.txt").write_text("".join(rows))
        expected = official.mme_calculation(str(results_dir))
        from_dir = mme.score(results_dir=str(results_dir))
        from_answers = mme.score(question_file=write_lines(tmp_path / f"q{seed}.jsonl", qlines),
                                 result_file=write_lines(tmp_path / f"a{seed}.jsonl", answers))
        for ours in (from_dir, from_answers):
            for subtask, value in expected.items():
                assert ours["subtasks"][subtask]["score"] == pytest.approx(value, abs=1e-9)
            assert ours["total"] == pytest.approx(sum(expected.values()), abs=1e-9)


# ------------------------------------------------------------------ OCRBench
OCR_TEXTS = ["{a}", "{A}", "It says {a}.", " {a}\n", "{a_nospace}", "nothing", "{a}\nmore"]


def test_ocrbench_agrees_with_official_rules(tmp_path):
    for seed in SEEDS:
        rng = random.Random(seed)
        samples, answers = [], []
        for i in range(80):
            hme = rng.random() < 0.2
            gts = rng.sample(["Hello World", "x ^ { 2 }", "42", "Total: 3", "a\nb", "ABC"],
                             rng.randint(1, 2))
            samples.append({"id": i, "dataset_name": "HME100k" if hme else "IIIT5K",
                            "type": ("Handwritten Mathematical Expression Recognition" if hme
                                     else "Regular Text Recognition"),
                            "question": "?", "answers": gts if rng.random() < 0.8 else gts[0]})
            a = rng.choice(gts + ["zzz"])
            text = rng.choice(OCR_TEXTS).format(a=a, A=a.upper(), a_nospace=a.replace(" ", ""))
            answers.append({"question_id": i, "prompt": "?", "text": text})
        qfile = tmp_path / f"ocr{seed}.json"
        qfile.write_text(json.dumps(samples))
        result = write_lines(tmp_path / f"ocr{seed}.jsonl", answers)
        expected = official.ocrbench_score(samples, {a["question_id"]: a["text"] for a in answers})
        assert ocrbench.score(str(qfile), result)["score"] == expected


# ------------------------------------------------------------------ VQAv2 / VizWiz
VQA_GT = ["yes", "Yes", "two", "2", "red", "red.", "the dog", "dog", "don't know", "1,000",
          "x-ray", "3.5", "unanswerable", "it's red"]
VQA_PRED = ["{g}", "{G}", "The {g}.", "{g}?", "Two", "an {g}!", " {g}\n", "{g}s", "isnt", "no"]


def _vqa_case(rng):
    if rng.random() < 0.3:
        gts = [rng.choice(VQA_GT)] * 10  # unanimous: the official rule leaves the GT raw
    else:
        gts = [rng.choice(VQA_GT) for _ in range(10)]
    g = rng.choice(gts)
    return gts, rng.choice(VQA_PRED).format(g=g, G=g.upper())


def test_vqav2_agrees_with_official_vqa_eval(tmp_path):
    for seed in SEEDS:
        rng = random.Random(seed)
        anns, answers, expected = [], [], []
        for i in range(80):
            gts, text = _vqa_case(rng)
            anns.append({"question_id": i, "answer_type": "other", "question_type": "what",
                         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                                     for j, a in enumerate(gts)]})
            answers.append({"question_id": i, "prompt": "?", "text": text})
            expected.append(official.vqa_eval_accuracy(official.llava_vqa_submission_answer(text), gts))
        ann = tmp_path / f"v2_{seed}.json"
        ann.write_text(json.dumps({"annotations": anns}))
        ours = vqav2.score(write_lines(tmp_path / f"v2_{seed}.jsonl", answers), annotation_file=str(ann))
        assert ours["accuracy"] == pytest.approx(100 * sum(expected) / len(expected), abs=1e-9)


def test_vizwiz_agrees_with_official_vqa_eval(tmp_path):
    rng = random.Random(5)
    anns, answers, expected = [], [], []
    for i in range(80):
        gts, text = _vqa_case(rng)
        image = f"VizWiz_val_{i:08d}.jpg"
        anns.append({"image": image, "question": "?", "answerable": 1, "answer_type": "other",
                     "answers": [{"answer": a, "answer_confidence": "yes"} for a in gts]})
        answers.append({"question_id": image, "prompt": "?", "text": text})
        expected.append(official.vqa_eval_accuracy(official.llava_vqa_submission_answer(text), gts))
    ann = tmp_path / "val.json"
    ann.write_text(json.dumps(anns))
    ours = vizwiz.score(write_lines(tmp_path / "vizwiz.jsonl", answers), annotation_file=str(ann))
    assert ours["accuracy"] == pytest.approx(100 * sum(expected) / len(expected), abs=1e-9)


# ------------------------------------------------------------------ MMBench circular
MMB_TEXTS = ["{L}", "({L})", "{L}.", "{L}) {o}", "{L}:", "{L},", "{L}\nbecause", "{l}", "{o}",
             "{o}.", "{O}", "{L} is right", "I pick {L}", "", "Z"]


def test_mmbench_circular_agrees_with_official_rule(tmp_path):
    for seed in SEEDS:
        rng = random.Random(seed)
        header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category",
                  "l2-category", "split", "image"]
        rows, answers, questions, texts = [], [], {}, {}
        for index in range(30):
            n = rng.randint(2, 4)
            options = rng.sample(["cat", "dog", "red car", "blue", "42", "tree"], n)
            gt = rng.randrange(n)
            questions[str(index)] = (options, gt)
            cells = options + [""] * (4 - n)
            rows.append([str(index), "?", "", *cells, "ABCD"[gt], "cat1", "l2", "dev", ""])
            for r in range(n):
                if rng.random() < 0.05:
                    continue  # a missing round: the question is not scored
                shown = options[r:] + options[:r]
                if rng.random() < 0.7:
                    pick = (gt - r) % n
                else:
                    pick = rng.randrange(n)
                text = rng.choice(MMB_TEXTS).format(L="ABCD"[pick], l="abcd"[pick], o=shown[pick],
                                                    O=shown[pick].upper())
                texts[(str(index), r)] = text
                answers.append({"question_id": index, "round_id": r, "prompt": "?", "text": text,
                                "options": shown, "option_char": list("ABCD"[:n])})
        qfile = tmp_path / f"mmb{seed}.tsv"
        qfile.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n")
        result = write_lines(tmp_path / f"mmb{seed}.jsonl", answers)
        ours = mmbench.score(str(qfile), result)
        assert ours["circular"] is True
        assert ours["accuracy"] == pytest.approx(official.mmbench_circular_accuracy(questions, texts),
                                                 abs=1e-9)
