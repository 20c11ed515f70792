import base64
import csv

import pytest

from eval_mllm.scorers import mmbench
from eval_mllm.scorers.common import ScorerInputError

COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category",
           "l2-category", "split", "image"]
# a base64 image bigger than the csv module's default 128 KiB field limit
IMAGE = base64.b64encode(b"\x89PNG" * 50000).decode()
ROWS = [
    # 3 options, answer B = "dog" (original index 1)
    ["10", "Which animal?", "nan", "cat", "dog", "bird", "", "B", "attr", "perception", "dev", IMAGE],
    # 2 options, answer A = "red"
    ["11", "Which colour?", "", "red", "green", "", "", "A", "color", "perception", "dev", IMAGE],
    # 4 options, answer D = "4"
    ["12", "How many?", "", "1", "2", "3", "4", "D", "attr", "reasoning", "dev", IMAGE],
]

# Round r shows the options rotated left by r; letter i in round r is original
# option (i + r) mod n.
CIRCULAR = [
    (10, 0, "B"),    # [cat, dog, bird]: B -> 1 ok
    (10, 1, "A."),   # [dog, bird, cat]: A -> (0+1)%3 = 1 ok
    (10, 2, "dog"),  # [bird, cat, dog]: option text -> index 2 -> (2+2)%3 = 1 ok
    (11, 0, "A"),    # [red, green]: A -> 0 ok
    (11, 1, "A"),    # [green, red]: A -> (0+1)%2 = 1 wrong
    (12, 0, "(D)"),  # [1,2,3,4]: 3 ok
    (12, 1, "C"),    # [2,3,4,1]: (2+1)%4 = 3 ok
    (12, 2, "B"),    # [3,4,1,2]: (1+2)%4 = 3 ok
    (12, 3, "A"),    # [4,1,2,3]: (0+3)%4 = 3 ok
]
# circular: 10 ok, 11 wrong, 12 ok -> 2/3; round 0 alone: 3/3
# per category: attr (10, 12) 100, color (11) 0; l2: perception (10, 11) 50, reasoning 100


def write_tsv(path, rows, columns=COLUMNS):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(columns)
        writer.writerows(rows)
    return str(path)


def write_answers(path, h, triples, tail=""):
    # LLaVA's model_vqa_mmbench.py writes question_id as the TSV index (an int)
    return str(h.write_jsonl(path, [h.answer(q, t, round_id=r) for q, r, t in triples], tail))


@pytest.fixture
def qfile(tmp_path):
    return write_tsv(tmp_path / "mmbench_dev_en.tsv", ROWS)


def test_picked_index():
    options = ["cat", "dog", "bird"]
    assert mmbench.picked_index("B", options) == 1
    assert mmbench.picked_index("(C) bird", options) == 2
    assert mmbench.picked_index("Dog.", options) == 1
    assert mmbench.picked_index("D", options) is None  # not an option of this question
    assert mmbench.picked_index("A cat", options) is None  # neither a letter nor an option


def test_circular_by_hand(qfile, tmp_path, h):
    m = mmbench.score(qfile, write_answers(tmp_path / "a.jsonl", h, CIRCULAR))
    assert m["circular"] is True
    assert m["accuracy"] == pytest.approx(200 / 3) and m["accuracy_round0"] == pytest.approx(100.0)
    assert m["per_category"] == pytest.approx({"attr": 100.0, "color": 0.0})
    assert m["per_l2_category"] == pytest.approx({"perception": 50.0, "reasoning": 100.0})
    assert (m["n_questions"], m["n_scored"], m["n_missing"]) == (3, 3, 0)


def test_single_round(qfile, tmp_path, h):
    m = mmbench.score(qfile, write_answers(tmp_path / "a.jsonl", h,
                                           [t for t in CIRCULAR if t[1] == 0]))
    assert m["circular"] is False and m["accuracy"] == pytest.approx(100.0)


def test_shuffled_answers_same_result(qfile, tmp_path, h):
    a = mmbench.score(qfile, write_answers(tmp_path / "a.jsonl", h, CIRCULAR))
    b = mmbench.score(qfile, write_answers(tmp_path / "b.jsonl", h, h.shuffled(CIRCULAR)))
    assert a == b


def test_truncated_missing_duplicate_unknown(qfile, tmp_path, h):
    # drop round 3 of question 12; (10, 0) answered twice (the last answer wins, as in LLaVA's
    # conversion); question 99 (rounds 5 and 0) is unknown (a round out of range for a known
    # question is an error: test_bad_inputs.py)
    triples = [(10, 0, "C")] + CIRCULAR[:-1] + [(99, 5, "A"), (99, 0, "A")]
    m = mmbench.score(qfile, write_answers(tmp_path / "a.jsonl", h, triples, h.TRUNCATED_TAIL))
    assert (m["n_scored"], m["n_missing"], m["n_partial"], m["n_duplicates"], m["n_unknown"],
            m["n_truncated_lines"]) == (2, 1, 1, 1, 2, 1)
    assert m["accuracy"] == pytest.approx(50.0)  # 10 ok, 11 wrong; 12 unscored
    # every answer read and not scored has its reason: 12's three answered rounds among them
    assert m["dropped"] == {"duplicate_answer": 1, "other_rounds_missing": 3,
                            "truncated_last_line": 1, "unknown_question_id": 2}


def test_test_split_submission(tmp_path, h):
    columns = [c for c in COLUMNS if c != "answer"]
    rows = [[v for c, v in zip(COLUMNS, row, strict=True) if c != "answer"] for row in ROWS]
    qfile = write_tsv(tmp_path / "mmbench_test_en.tsv", rows, columns)
    out = tmp_path / "sub.tsv"
    m = mmbench.score(qfile, write_answers(tmp_path / "a.jsonl", h, [(10, 0, "B"), (12, 0, "D")]),
                      submission_out=str(out))
    assert m["accuracy"] is None and m["n_no_ground_truth"] == 3
    with open(out, newline="", encoding="utf-8") as f:
        table = list(csv.reader(f, delimiter="\t"))
    assert table == [["index", "question", "A", "B", "C", "D", "prediction"],
                     ["10", "Which animal?", "cat", "dog", "bird", "", "B"],
                     ["11", "Which colour?", "red", "green", "", "", ""],
                     ["12", "How many?", "1", "2", "3", "4", "D"]]


def test_test_split_through_the_cli_writes_the_submission(tmp_path, h, cli_json):
    """No ground truth is no error: the answers go to the submission (exit 0)."""
    columns = [c for c in COLUMNS if c != "answer"]
    rows = [[v for c, v in zip(COLUMNS, row, strict=True) if c != "answer"] for row in ROWS]
    out = tmp_path / "sub.tsv"
    m = cli_json("mmbench", "--question-file", write_tsv(tmp_path / "test.tsv", rows, columns),
                 "--result-file", write_answers(tmp_path / "a.jsonl", h, [(10, 0, "B"), (12, 0, "D")]),
                 "--submission-out", out)
    assert m["accuracy"] is None and (m["n_scored"], m["n_missing"], m["n_no_ground_truth"]) == (2, 1, 3)
    assert out.read_text(encoding="utf-8").splitlines()[1].endswith("\tB")


def test_missing_file_and_field(qfile, tmp_path, h):
    with pytest.raises(ScorerInputError, match="nope.tsv: file not found"):
        mmbench.score(str(tmp_path / "nope.tsv"), "x")
    bad = write_tsv(tmp_path / "bad.tsv", [["1", "q"]], ["index", "question"])
    with pytest.raises(ScorerInputError, match=r"bad.tsv: line 1: missing column 'A'"):
        mmbench.score(bad, "x")


def test_cli(qfile, tmp_path, h, cli_json):
    m = cli_json("mmbench", "--question-file", qfile, "--result-file",
                 write_answers(tmp_path / "a.jsonl", h, CIRCULAR))
    assert m["accuracy"] == pytest.approx(200 / 3)


def test_options_of_stops_at_the_first_absent_option():
    # lmms-eval docs come from pandas/datasets: an empty cell can be a float NaN or None
    assert mmbench.options_of({"A": "x", "B": float("nan"), "C": "y"}) == ["x"]
    assert mmbench.options_of({"A": "x", "B": " none ", "C": "y"}) == ["x"]
    assert mmbench.options_of({"A": "a", "B": "b", "C": "c", "D": "d", "E": "e"}, "ABCD") == ["a", "b", "c", "d"]
