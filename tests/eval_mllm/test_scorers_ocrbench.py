import pytest

from eval_mllm.scorers import ocrbench
from eval_mllm.scorers.common import ScorerInputError

HME = "Handwritten Mathematical Expression Recognition"
QUESTIONS = [
    {"id": 0, "dataset_name": "IIIT5K", "question": "what is written in the image?",
     "answers": ["CENTRE"], "type": "Regular Text Recognition"},
    {"id": 1, "dataset_name": "docVQA", "question": "What is the total?",
     "answers": ["$12.50", "12.50"], "type": "Doc-oriented VQA"},
    {"id": 2, "dataset_name": "HME100k", "question": "Write the expression.",
     "answers": "x ^ { 2 }", "type": HME},
    {"id": 3, "dataset_name": "HME100k", "question": "Write the expression.",
     "answers": ["X^{2}"], "type": HME},
    {"id": 4, "dataset_name": "ESTVQA", "question": "What shop is this?",
     "answers": ["Coffee\nShop"], "type": "Scene Text-centric VQA"},
]
ANSWERS = [
    (0, "The text is centre."),  # "centre" in it (case-folded) -> ok
    (1, "12.5"),                 # neither "$12.50" nor "12.50" is in "12.5" -> wrong
    (2, "x^{2} + 1"),            # HME: "x^{2}" in "x^{2}+1" -> ok
    (3, "x^{2}"),                # HME keeps case: "X^{2}" not in "x^{2}" -> wrong
    (4, "coffee shop"),          # newline -> space: "coffee shop" -> ok
]
# score 3; scaled to 1000 over 5 questions: 600


@pytest.fixture
def qfile(tmp_path, h):
    return str(h.write_json(tmp_path / "OCRBench.json", QUESTIONS))


def test_score_by_hand(qfile, tmp_path, h):
    m = ocrbench.score(qfile, str(h.answers_file(tmp_path / "a.jsonl", ANSWERS)))
    assert m["score"] == 3 and m["score_scaled_1000"] == pytest.approx(600.0)
    assert m["per_type"] == {"Regular Text Recognition": 1, "Doc-oriented VQA": 0, HME: 1,
                             "Scene Text-centric VQA": 1}
    assert m["per_group"] == {"Text Recognition": 1, "Scene Text-centric VQA": 1,
                              "Doc-oriented VQA": 0, "Key Information Extraction": 0, HME: 1}


def test_shuffled_answers_same_result(qfile, tmp_path, h):
    assert ocrbench.score(qfile, str(h.answers_file(tmp_path / "a.jsonl", ANSWERS))) == \
        ocrbench.score(qfile, str(h.answers_file(tmp_path / "b.jsonl", h.shuffled(ANSWERS))))


def test_truncated_missing_duplicate_unknown(qfile, tmp_path, h):
    pairs = [(0, "wrong"), ANSWERS[0], ANSWERS[2], (1000, "x")]  # the last answer for 0 wins
    m = ocrbench.score(qfile, str(h.answers_file(tmp_path / "a.jsonl", pairs, h.TRUNCATED_TAIL)))
    assert (m["n_scored"], m["n_missing"], m["n_duplicates"], m["n_unknown"],
            m["n_truncated_lines"]) == (2, 3, 1, 1, 1)
    assert m["score"] == 2 and m["score_scaled_1000"] == pytest.approx(1000.0)


def test_missing_file_and_field(tmp_path, h):
    with pytest.raises(ScorerInputError, match="nope.json: file not found"):
        ocrbench.score(str(tmp_path / "nope.json"), "x")
    bad = h.write_json(tmp_path / "bad.json", [{"answers": ["a"], "type": "Doc-oriented VQA"}])
    with pytest.raises(ScorerInputError, match=r"bad.json: entry 0: missing field 'id'"):
        ocrbench.score(str(bad), "x")


def test_cli(qfile, tmp_path, h, cli_json):
    m = cli_json("ocrbench", "--question-file", qfile, "--result-file",
                 h.answers_file(tmp_path / "a.jsonl", ANSWERS))
    assert m["score"] == 3
