"""Independent re-implementations of official evaluation rules, for agreement tests.

Written from the official tools' rules (not from our scorers), each reading the files in the
format the official tool reads.  LLaVA's own scripts (eval_science_qa.py, eval_pope.py,
eval_textvqa.py + m4c_evaluator.py) are not re-implemented: the tests run them as installed.
"""

import json
import os
import re

from llava.eval.m4c_evaluator import EvalAIAnswerProcessor

_EVALAI = EvalAIAnswerProcessor()


# ---------------------------------------------------------------- GQA
def gqa_accuracy(answer_lines, questions_json):
    """LLaVA's convert_gqa_for_eval.py (prediction = text.rstrip('.').lower(), later lines win
    when the predictions list becomes a dict) + GQA eval.py's accuracy (exact string equality
    with question['answer'] over the balanced questions), in percent."""
    predictions = {}
    for line in answer_lines:
        res = json.loads(line)
        predictions[res["question_id"]] = res["text"].rstrip(".").lower()
    scores = [predictions[qid] == q["answer"]
              for qid, q in questions_json.items() if q.get("isBalanced", True)]
    return 100.0 * sum(scores) / len(scores)


# ---------------------------------------------------------------- MME
def _mme_parse(pred):
    if pred in ["yes", "no"]:
        return pred
    prefix = pred[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def mme_calculation(results_dir):
    """MME's eval_tool/calculation.py: per <subtask>.txt, lines taken two at a time (one image),
    split on tabs, prediction lower-cased with its newline; acc and acc+ (images with both
    right) in percent; score = acc + acc+.  Returns {subtask: score}."""
    scores = {}
    for name in sorted(os.listdir(results_dir)):
        with open(os.path.join(results_dir, name)) as f:
            lines = f.readlines()
        gts, preds, image_ok = [], [], []
        for i in range(0, len(lines), 2):
            pair = lines[i:i + 2]
            assert len(pair) == 2
            n_right = 0
            for item in pair:
                _, _, gt, pred = item.split("\t")
                gt, pred = gt.lower(), _mme_parse(pred.lower())
                gts.append(gt)
                preds.append(pred)
                n_right += gt == pred
            image_ok.append(n_right == 2)
        acc = sum(g == p for g, p in zip(gts, preds)) / len(gts)
        acc_plus = sum(image_ok) / len(image_ok)
        scores[name[:-4]] = 100 * acc + 100 * acc_plus
    return scores


# ---------------------------------------------------------------- OCRBench
def ocrbench_score(samples, predictions):
    """OCRBench's scoring: a sample scores 1 when any answer is in the prediction, both
    lower-cased, stripped, newlines as spaces; for dataset HME100k both have spaces and
    newlines removed and case kept.  `samples`: list of dicts with id, dataset_name,
    answers (list or str); `predictions`: {id: text}.  Returns the count."""
    total = 0
    for s in samples:
        predict = predictions[s["id"]]
        answers = s["answers"] if isinstance(s["answers"], list) else [s["answers"]]
        result = 0
        for answer in answers:
            if s["dataset_name"] == "HME100k":
                a = answer.strip().replace("\n", " ").replace(" ", "")
                p = predict.strip().replace("\n", " ").replace(" ", "")
            else:
                a = answer.lower().strip().replace("\n", " ")
                p = predict.lower().strip().replace("\n", " ")
            if a in p:
                result = 1
        total += result
    return total


# ---------------------------------------------------------------- VQAv2 / VizWiz
def vqa_eval_accuracy(submitted_answer, gt_answers):
    """The official VQA evaluation (vqaEval.py) of one submitted answer: the answer gets
    newline/tab -> space, strip, processPunctuation, processDigitArticle; the ground-truth
    answers get processPunctuation only when they are not all identical; each GT answer is
    left out in turn (by identity) and acc = min(1, matches among the others / 3)."""
    res = submitted_answer.replace("\n", " ").replace("\t", " ").strip()
    res = _EVALAI.process_digit_article(_EVALAI.process_punctuation(res))
    gts = [{"answer": a, "answer_id": i} for i, a in enumerate(gt_answers)]
    if len(set(gt_answers)) > 1:
        for g in gts:
            g["answer"] = _EVALAI.process_punctuation(g["answer"])
    accs = []
    for g in gts:
        others = [o for o in gts if o != g]
        accs.append(min(1, len([o for o in others if o["answer"] == res]) / 3))
    return sum(accs) / len(accs)


def llava_vqa_submission_answer(text):
    """LLaVA's convert_vqav2_for_submission.py / convert_vizwiz_for_submission.py: the EvalAI
    answer processor applied to the model's text."""
    return _EVALAI(text)


# ---------------------------------------------------------------- MMBench circular
_LETTER = re.compile(r"\(([A-E])\)|([A-E])(?:[.):,\n]|$)")


def mmbench_pick(text, shown):
    """The documented MMBench reading: a leading letter of the shown options ("B", "(B)",
    "B.", "B)", "B:", "B,", "B" + newline), else the text equal to exactly one shown option
    (case-folded, a trailing period dropped)."""
    letters = "ABCDE"[:len(shown)]
    m = _LETTER.match(text.strip())
    if m and (m.group(1) or m.group(2)) in letters:
        return letters.index(m.group(1) or m.group(2))

    def norm(s):
        return s.strip().rstrip(".").strip().casefold()
    hits = [i for i, o in enumerate(shown) if norm(o) == norm(text)]
    return hits[0] if len(hits) == 1 else None


def mmbench_circular_accuracy(questions, answers):
    """Circular evaluation: `questions` {index: (options, gt index)}, `answers`
    {(index, round): text}.  Round r shows the options rotated left r times; a question is
    right only when every one of its n rounds picks the ground-truth option.  Percent over
    the questions with all rounds answered."""
    right = []
    for index, (options, gt) in questions.items():
        n = len(options)
        if not all((index, r) in answers for r in range(n)):
            continue
        ok = True
        for r in range(n):
            shown = options[r:] + options[:r]
            picked = mmbench_pick(answers[(index, r)], shown)
            ok &= picked is not None and (picked + r) % n == gt
        right.append(ok)
    return 100.0 * sum(right) / len(right)
