import csv

import pytest

from eval_mllm.scorers import mmstar
from eval_mllm.scorers.common import ScorerInputError

QUESTIONS = [
    {"index": 1, "question": "Q1\nOptions: A: x, B: y, C: z, D: w", "answer": "A",
     "category": "coarse perception", "l2_category": "image scene"},
    {"index": 2, "question": "Q2", "answer": "B", "category": "math", "l2_category": "numeric"},
    {"index": 3, "question": "Q3", "answer": "C", "category": "math", "l2_category": "numeric"},
    {"index": 4, "question": "Q4", "answer": "D", "category": "logical reasoning",
     "l2_category": "code"},
    {"index": 5, "question": "Q5", "answer": "A", "category": "coarse perception",
     "l2_category": "image style"},
]
ANSWERS = [
    (1, "A"),                              # ok
    (2, "(B) 42"),                         # ok
    (3, "The answer is D"),                # D, wrong
    (4, "I think the answer is: (D)."),    # ok
    (5, "B."),                             # wrong
]
# overall 3/5 = 60%; coarse perception 1/2, math 1/2, logical reasoning 1/1
PER_CATEGORY = {"coarse perception": 50.0, "math": 50.0, "logical reasoning": 100.0}


@pytest.fixture
def tsv(tmp_path):
    path = tmp_path / "MMStar.tsv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["index", "question", "answer", "category", "l2_category",
                                    "image"], delimiter="\t")
        writer.writeheader()
        writer.writerows({**q, "image": "aGVsbG8="} for q in QUESTIONS)
    return str(path)


def test_parse_letter():
    assert mmstar.parse_letter("C") == "C"
    assert mmstar.parse_letter("A) yes") == "A"
    assert mmstar.parse_letter("the answer is a cat") is None
    assert mmstar.parse_letter("E") is None


def test_accuracy_by_hand_tsv(tsv, tmp_path, h):
    m = mmstar.score(tsv, str(h.answers_file(tmp_path / "a.jsonl", ANSWERS)))
    assert m["accuracy"] == pytest.approx(60.0)
    assert m["per_category"] == pytest.approx(PER_CATEGORY)
    assert m["per_l2_category"]["numeric"] == pytest.approx(50.0)


def test_jsonl_question_file_same_result(tsv, tmp_path, h):
    answers = str(h.answers_file(tmp_path / "a.jsonl", ANSWERS))
    jsonl = str(h.write_jsonl(tmp_path / "mmstar.jsonl", QUESTIONS))
    assert mmstar.score(jsonl, answers) == mmstar.score(tsv, answers)


def test_shuffled_answers_same_result(tsv, tmp_path, h):
    assert mmstar.score(tsv, str(h.answers_file(tmp_path / "a.jsonl", ANSWERS))) == \
        mmstar.score(tsv, str(h.answers_file(tmp_path / "b.jsonl", h.shuffled(ANSWERS))))


def test_truncated_missing_duplicate_unknown(tsv, tmp_path, h):
    pairs = [(1, "B")] + ANSWERS[:4] + [(6, "A")]  # 1 answered twice: the last answer wins
    m = mmstar.score(tsv, str(h.answers_file(tmp_path / "a.jsonl", pairs, h.TRUNCATED_TAIL)))
    assert (m["n_scored"], m["n_missing"], m["n_duplicates"], m["n_unknown"],
            m["n_truncated_lines"]) == (4, 1, 1, 1, 1)
    assert m["accuracy"] == pytest.approx(75.0)  # 1, 2, 4 right of 4 answered


def test_missing_file_and_field(tmp_path, h):
    with pytest.raises(ScorerInputError, match="nope.tsv: file not found"):
        mmstar.score(str(tmp_path / "nope.tsv"), "x")
    bad = h.write_jsonl(tmp_path / "bad.jsonl", [{"index": 1, "answer": "A"}])
    with pytest.raises(ScorerInputError, match=r"bad.jsonl: line 1: missing field 'category'"):
        mmstar.score(str(bad), "x")


def test_cli(tsv, tmp_path, h, cli_json):
    m = cli_json("mmstar", "--question-file", tsv, "--result-file",
                 h.answers_file(tmp_path / "a.jsonl", ANSWERS))
    assert m["accuracy"] == pytest.approx(60.0)
