import pytest

from eval_mllm.scorers import scienceqa
from eval_mllm.scorers.common import ScorerInputError


def problem(choices, answer, image):
    return {"question": "?", "choices": choices, "answer": answer, "image": image,
            "split": "test", "hint": ""}


PROBLEMS = {
    "1": problem(["a", "b"], 0, "image.png"),
    "2": problem(["a", "b", "c"], 2, None),
    "3": problem(["a", "b"], 1, "image.png"),
    "4": problem(["a", "b", "c", "d"], 3, "image.png"),
    "5": {**problem(["a", "b"], 0, None), "split": "train"},
}
SPLITS = {"test": ["1", "2", "3", "4"], "train": ["5"]}
ANSWERS = [("1", "A"), ("2", "The answer is C."), ("3", "C"), ("4", "D. dog")]
# 1: A = index 0 ok; 2: C = 2 ok; 3: C is beyond 2 choices -> wrong; 4: "D. " -> 3 ok
# overall 3/4 = 75%; IMG (prompt has <image>: problems 1, 3, 4) -> 1 and 4 correct: 2/3
IMAGE_PIDS = {"1", "3", "4"}


@pytest.fixture
def base(tmp_path, h):
    h.write_json(tmp_path / "sqa" / "problems.json", PROBLEMS)
    h.write_json(tmp_path / "sqa" / "pid_splits.json", SPLITS)
    return str(tmp_path / "sqa")


def sqa_answers(path, pairs, h, tail=""):
    """Answers whose prompt holds <image> for the image problems, as LLaVA writes them."""
    return h.write_jsonl(path, [h.answer(q, t, prompt=("<image>\nq" if q in IMAGE_PIDS else "q"))
                                for q, t in pairs], tail)


def test_parse_letter_like_llava():
    assert scienceqa.parse_letter("B") == "B"
    assert scienceqa.parse_letter("B. cat") == "B"
    assert scienceqa.parse_letter("so The answer is E.") == "E"
    # the official pattern needs one more character after the letter, not a newline
    assert scienceqa.parse_letter("so The answer is E") is None
    assert scienceqa.parse_letter("The answer is E\nbecause") is None
    # two matches: no letter (not the first one)
    assert scienceqa.parse_letter("The answer is A. The answer is B.") is None
    assert scienceqa.parse_letter("B\n") is None and scienceqa.parse_letter(" B") is None
    assert scienceqa.parse_letter("") is None
    assert scienceqa.parse_letter("b") is None
    assert scienceqa.parse_letter("(A)") is None


def test_accuracy_by_hand(base, tmp_path, h):
    m = scienceqa.score(base, str(sqa_answers(tmp_path / "a.jsonl", ANSWERS, h)))
    assert m["accuracy"] == pytest.approx(75.0) and m["img_accuracy"] == pytest.approx(200 / 3)
    assert (m["n_correct"], m["n_img"], m["n_img_correct"]) == (3, 3, 2)


def test_shuffled_answers_same_result(base, tmp_path, h):
    assert scienceqa.score(base, str(sqa_answers(tmp_path / "a.jsonl", ANSWERS, h))) == \
        scienceqa.score(base, str(sqa_answers(tmp_path / "b.jsonl", h.shuffled(ANSWERS), h)))


def test_truncated_missing_duplicate_unknown(base, tmp_path, h):
    # 4 missing (counted wrong, as LLaVA); 1 repeated; 5 is not in the test split
    pairs = [("1", "B")] + ANSWERS[:3] + [("5", "A")]  # the last answer for 1 wins, as LLaVA's dict
    path = str(sqa_answers(tmp_path / "a.jsonl", pairs, h, h.TRUNCATED_TAIL))
    m = scienceqa.score(base, path)
    assert (m["n_scored"], m["n_missing"], m["n_duplicates"], m["n_unknown"],
            m["n_truncated_lines"]) == (3, 1, 1, 1, 1)
    assert m["dropped"] == {"duplicate_answer": 1, "unknown_question_id": 1, "truncated_last_line": 1}
    # correct: 1, 2 -> 2/4 = 50%; IMG as LLaVA: answered with <image> (1, 3) -> 1 of 2
    assert m["accuracy"] == pytest.approx(50.0) and m["img_accuracy"] == pytest.approx(50.0)
    # the named non-official rule: every image problem, unanswered 4 counted wrong -> 1 of 3
    m = scienceqa.score(base, path, img_subset="problems")
    assert m["img_accuracy"] == pytest.approx(100 / 3) and m["img_subset"] == "problems"


def test_missing_file_and_field(base, tmp_path, h):
    with pytest.raises(ScorerInputError, match="problems.json: file not found"):
        scienceqa.score(str(tmp_path), "x")
    h.write_json(tmp_path / "bad" / "problems.json", {"1": {"question": "?", "answer": 0}})
    h.write_json(tmp_path / "bad" / "pid_splits.json", {"test": ["1"]})
    with pytest.raises(ScorerInputError, match=r"problems.json: problem '1': missing field 'choices'"):
        scienceqa.score(str(tmp_path / "bad"), "x")


def test_cli(base, tmp_path, h, cli_json):
    m = cli_json("scienceqa", "--base-dir", base, "--split", "test",
                 "--result-file", sqa_answers(tmp_path / "a.jsonl", ANSWERS, h))
    assert m["img_accuracy"] == pytest.approx(200 / 3)
