import pytest

from eval_mllm.scorers import gqa
from eval_mllm.scorers.common import ScorerInputError

ANNOTATIONS = {"201": {"answer": "left", "question": "Which side?"},
               "202": {"answer": "no", "question": "Is it?"},
               "203": {"answer": "table", "question": "What is it?"},
               "204": {"answer": "yes", "question": "not in the question file"}}
ANSWERS = [("201", "Left."), ("202", "No"), ("203", "The table")]
# "Left." -> "left" ok; "No" -> "no" ok; "the table" != "table" -> 2/3 = 66.67%


@pytest.fixture
def files(tmp_path, h):
    q = h.write_jsonl(tmp_path / "llava_gqa_testdev_balanced.jsonl",
                      [{"question_id": k, "image": f"n{k}.jpg", "text": "?"} for k in ("201", "202", "203")])
    a = h.write_json(tmp_path / "testdev_balanced_questions.json", ANNOTATIONS)
    return str(q), str(a)


def run(files, path):
    return gqa.score(files[0], str(path), files[1])


def test_accuracy_by_hand(files, tmp_path, h):
    m = run(files, h.answers_file(tmp_path / "a.jsonl", ANSWERS))
    assert m["accuracy"] == pytest.approx(200 / 3) and m["n_correct"] == 2
    assert (m["n_questions"], m["n_scored"]) == (3, 3)


def test_int_ids_match_string_ids(files, tmp_path, h):
    m = run(files, h.answers_file(tmp_path / "a.jsonl", [(int(q), t) for q, t in ANSWERS]))
    assert m["accuracy"] == pytest.approx(200 / 3)


def test_shuffled_answers_same_result(files, tmp_path, h):
    assert run(files, h.answers_file(tmp_path / "a.jsonl", ANSWERS)) == \
        run(files, h.answers_file(tmp_path / "b.jsonl", ANSWERS[::-1]))


def test_truncated_missing_duplicate_unknown(files, tmp_path, h):
    # 201 answered twice: the last answer wins, as in LLaVA's scripts
    pairs = [("201", "right"), ("201", "left"), ("204", "yes"), ("999", "x")]
    m = run(files, h.answers_file(tmp_path / "a.jsonl", pairs, h.TRUNCATED_TAIL))
    # 204 is annotated but not in the question file: unknown too
    assert (m["n_scored"], m["n_missing"], m["n_duplicates"], m["n_unknown"],
            m["n_truncated_lines"]) == (1, 2, 1, 2, 1)
    assert m["accuracy"] == pytest.approx(100.0)


def test_missing_file_and_field(files, tmp_path, h):
    with pytest.raises(ScorerInputError, match="nope.json: file not found"):
        gqa.score(files[0], "x", str(tmp_path / "nope.json"))
    bad = h.write_json(tmp_path / "bad.json", {k: {"question": "?"} for k in ("201", "202", "203")})
    with pytest.raises(ScorerInputError, match=r"bad.json: question '201': missing field 'answer'"):
        gqa.score(files[0], "x", str(bad))


def test_cli(files, tmp_path, h, cli_json):
    m = cli_json("gqa", "--question-file", files[0], "--annotation-file", files[1],
                 "--result-file", h.answers_file(tmp_path / "a.jsonl", ANSWERS))
    assert m["accuracy"] == pytest.approx(200 / 3)
