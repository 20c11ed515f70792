import json

import pytest

from eval_mllm.scorers import judged
from eval_mllm.scorers.common import ScorerInputError


@pytest.fixture
def qfile(tmp_path, h):
    return str(h.write_jsonl(tmp_path / "questions.jsonl",
                             [{"question_id": i, "image": f"{i}.jpg", "text": f"Q{i}"}
                              for i in range(3)]))


def test_mmvet_submission(qfile, tmp_path, h):
    out = tmp_path / "mmvet.json"
    result = h.answers_file(tmp_path / "a.jsonl", [(1, "b"), (0, "dup"), (0, "a"), (7, "?")],
                            h.TRUNCATED_TAIL)
    m = judged.score_mmvet(str(result), str(out), qfile)
    assert json.loads(out.read_text()) == {"v1_0": "a", "v1_1": "b", "v1_2": ""}
    assert m["score"] is None and m["status"] == f"needs GPT judge: submit {out}"
    assert (m["n_missing"], m["n_duplicates"], m["n_unknown"], m["n_truncated_lines"]) == (1, 1, 1, 1)


def test_mmvet_without_question_file(tmp_path, h):
    out = tmp_path / "mmvet.json"
    judged.score_mmvet(str(h.answers_file(tmp_path / "a.jsonl", [("v1_3", "x"), (4, "y")])), str(out))
    assert json.loads(out.read_text()) == {"v1_3": "x", "v1_4": "y"}


def test_llavabench_answers_in_question_order(qfile, tmp_path, h):
    out = tmp_path / "llavabench.jsonl"
    m = judged.score_llavabench(str(h.answers_file(tmp_path / "a.jsonl", [(2, "c"), (0, "a")])),
                                str(out), qfile)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["question_id"], r["text"]) for r in lines] == [(0, "a"), (1, ""), (2, "c")]
    assert lines[1]["metadata"] == {"missing": True}
    assert m["score"] is None and m["n_missing"] == 1


def test_missing_file_and_field(qfile, tmp_path, h):
    with pytest.raises(ScorerInputError, match="nope.jsonl: file not found"):
        judged.score_mmvet(str(tmp_path / "nope.jsonl"), str(tmp_path / "o.json"))
    bad = h.write_jsonl(tmp_path / "bad.jsonl", [{"question_id": 0}])
    with pytest.raises(ScorerInputError, match=r"bad.jsonl: line 1: missing field 'text'"):
        judged.score_llavabench(str(bad), str(tmp_path / "o.jsonl"), qfile)


def test_cli(qfile, tmp_path, h, cli_json):
    out = tmp_path / "mmvet.json"
    m = cli_json("mmvet", "--result-file", h.answers_file(tmp_path / "a.jsonl", [(0, "a")]),
                 "--question-file", qfile, "--submission-out", out)
    assert m == {**m, "benchmark": "mmvet", "score": None,
                 "status": f"needs GPT judge: submit {out}"}
    m = cli_json("llavabench", "--result-file", h.answers_file(tmp_path / "b.jsonl", [(0, "a")]),
                 "--question-file", qfile, "--submission-out", tmp_path / "lb.jsonl")
    assert m["benchmark"] == "llavabench" and m["score"] is None
