import pytest

from eval_mllm.scorers import mme
from eval_mllm.scorers.common import ScorerInputError

# (subtask, image, question, ground truth, prediction)
ROWS = [
    ("existence", "img1.jpg", "Is there a dog? Please answer yes or no.", "Yes", "Yes"),    # ok
    ("existence", "img1.jpg", "Is there a cat? Please answer yes or no.", "No", "No"),      # ok
    ("existence", "img2.jpg", "Is there a car? Please answer yes or no.", "Yes", "no"),     # wrong
    ("existence", "img2.jpg", "Is there a bus? Please answer yes or no.", "No",
     "No, it is not."),                                   # "no, " has "no" in 4 chars -> ok
    ("code_reasoning", "0020.png", "Is the output 'Hi'? Please answer yes or no.", "Yes",
     "Yes, it is"),                                       # ok
    ("code_reasoning", "0020.png", "Is the output 'Ho'? Please answer yes or no.", "No",
     "Maybe"),                                            # "mayb" -> other -> wrong
]
# existence: acc 3/4 = 75, acc+ 1/2 images = 50 -> 125
# code_reasoning: acc 1/2 = 50, acc+ 0/1 = 0 -> 50
# perception = 125, cognition = 50


def write_results_dir(path, rows):
    path.mkdir()
    for subtask in {r[0] for r in rows}:
        lines = ["\t".join(r[1:]) for r in rows if r[0] == subtask]
        (path / f"{subtask}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def question_file(tmp_path, h):
    return h.write_jsonl(tmp_path / "mme_q.jsonl", [
        {"question_id": i, "image": f"{task}/{img}", "text": q, "category": task, "answer": gt}
        for i, (task, img, q, gt, _) in enumerate(ROWS)])


ANSWERS = [(i, row[4]) for i, row in enumerate(ROWS)]


def check_hand_values(m):
    ex, code = m["subtasks"]["existence"], m["subtasks"]["code_reasoning"]
    assert (ex["acc"], ex["acc_plus"], ex["score"]) == pytest.approx((75.0, 50.0, 125.0))
    assert (code["acc"], code["acc_plus"], code["score"]) == pytest.approx((50.0, 0.0, 50.0))
    assert code["n_other"] == 1
    assert m["perception"] == pytest.approx(125.0) and m["cognition"] == pytest.approx(50.0)
    assert m["total"] == pytest.approx(175.0)
    assert "OCR" in m["missing_subtasks"] and "existence" not in m["missing_subtasks"]


def test_parse_yes_no():
    assert mme.parse_yes_no(" Yes ") == "yes"
    assert mme.parse_yes_no("Not really") == "no"   # "not " holds "no"
    assert mme.parse_yes_no("unknown") == "other"
    assert mme.parse_yes_no("I think yes") == "other"  # only the first 4 characters count


def test_results_dir_by_hand(tmp_path):
    check_hand_values(mme.score(results_dir=str(write_results_dir(tmp_path / "res", ROWS))))


def test_results_dir_line_order_does_not_matter(tmp_path, h):
    a = mme.score(results_dir=str(write_results_dir(tmp_path / "a", ROWS)))
    b = mme.score(results_dir=str(write_results_dir(tmp_path / "b", h.shuffled(ROWS))))
    assert a == b


def test_results_dir_bad_line(tmp_path):
    d = tmp_path / "res"
    d.mkdir()
    (d / "count.txt").write_text("img.jpg\tHow many?\tYes\n", encoding="utf-8")
    with pytest.raises(ScorerInputError, match=r"count.txt: line 1: expected 4 tab-separated"):
        mme.score(results_dir=str(d))


def test_question_file_by_hand(tmp_path, h):
    m = mme.score(question_file=str(question_file(tmp_path, h)),
                  result_file=str(h.answers_file(tmp_path / "a.jsonl", ANSWERS)))
    check_hand_values(m)
    assert (m["n_questions"], m["n_scored"]) == (6, 6)


def test_shuffled_answers_same_result(tmp_path, h):
    q = str(question_file(tmp_path, h))
    a = mme.score(question_file=q, result_file=str(h.answers_file(tmp_path / "a.jsonl", ANSWERS)))
    b = mme.score(question_file=q, result_file=str(
        h.answers_file(tmp_path / "b.jsonl", h.shuffled(ANSWERS))))
    assert a == b


def test_truncated_missing_duplicate_unknown(tmp_path, h):
    # answer 3 (img2's second question) missing, answer 0 repeated (the last one wins), id 42 unknown
    pairs = [(0, "No")] + [p for p in ANSWERS if p[0] != 3] + [(42, "Yes")]
    m = mme.score(question_file=str(question_file(tmp_path, h)),
                  result_file=str(h.answers_file(tmp_path / "a.jsonl", pairs, h.TRUNCATED_TAIL)))
    assert (m["n_scored"], m["n_missing"], m["n_duplicates"], m["n_unknown"],
            m["n_truncated_lines"]) == (5, 1, 1, 1, 1)
    ex = m["subtasks"]["existence"]
    # acc over answered: 2 of 3; img2 is incomplete so acc+ is over img1 only: 1/1
    assert ex["acc"] == pytest.approx(200 / 3) and ex["acc_plus"] == pytest.approx(100.0)


def test_missing_file_and_field(tmp_path, h):
    with pytest.raises(ScorerInputError, match="nope.jsonl: file not found"):
        mme.score(question_file=str(tmp_path / "nope.jsonl"), result_file="x")
    q = h.write_jsonl(tmp_path / "q.jsonl", [{"question_id": 1, "image": "count/a.jpg",
                                              "text": "?", "category": "count"}])
    with pytest.raises(ScorerInputError, match=r"q.jsonl: line 1: missing field 'answer'"):
        mme.score(question_file=str(q), result_file="x")


def test_cli(tmp_path, cli_json):
    m = cli_json("mme", "--results-dir", write_results_dir(tmp_path / "res", ROWS))
    assert m["perception"] == pytest.approx(125.0) and m["cognition"] == pytest.approx(50.0)
