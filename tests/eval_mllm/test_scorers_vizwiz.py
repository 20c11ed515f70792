import json

import pytest

from eval_mllm.scorers import vizwiz
from eval_mllm.scorers.common import ScorerInputError


def gt(*answers):
    return [{"answer": a, "answer_confidence": "yes"} for a in answers]


VAL = [
    {"image": "VizWiz_val_00000000.jpg", "question": "What is this?",
     "answers": gt(*["unanswerable"] * 10), "answerable": 0, "answer_type": "unanswerable"},
    {"image": "VizWiz_val_00000001.jpg", "question": "What is in the can?",
     "answers": gt(*["soup"] * 2, *["can"] * 8), "answerable": 1, "answer_type": "other"},
]
ANSWERS = [("VizWiz_val_00000000.jpg", "Unanswerable"), ("VizWiz_val_00000001.jpg", "soup")]
# image 0: all 10 GT match -> 1.0; image 1: 2 GT match -> (2*1/3 + 8*2/3)/10 = 0.6
# accuracy = (1 + 0.6)/2 = 80%


@pytest.fixture
def ann(tmp_path, h):
    return str(h.write_json(tmp_path / "val.json", VAL))


def test_accuracy_by_hand(ann, tmp_path, h):
    m = vizwiz.score(str(h.answers_file(tmp_path / "a.jsonl", ANSWERS)), annotation_file=ann)
    assert m["accuracy"] == pytest.approx(80.0)
    assert m["per_answer_type"] == pytest.approx({"other": 60.0, "unanswerable": 100.0})


def test_question_file_with_other_ids(ann, tmp_path, h):
    qfile = h.write_jsonl(tmp_path / "q.jsonl", [
        {"question_id": 5, "image": "val/VizWiz_val_00000000.jpg", "text": "?"},
        {"question_id": 6, "image": "val/VizWiz_val_00000001.jpg", "text": "?"}])
    m = vizwiz.score(str(h.answers_file(tmp_path / "a.jsonl", [(6, "soup"), (5, "unanswerable")])),
                     annotation_file=ann, question_file=str(qfile))
    assert m["accuracy"] == pytest.approx(80.0)


def test_shuffled_answers_same_result(ann, tmp_path, h):
    a = vizwiz.score(str(h.answers_file(tmp_path / "a.jsonl", ANSWERS)), annotation_file=ann)
    b = vizwiz.score(str(h.answers_file(tmp_path / "b.jsonl", ANSWERS[::-1])), annotation_file=ann)
    assert a == b


def test_truncated_missing_duplicate_unknown(ann, tmp_path, h):
    pairs = [("VizWiz_val_00000001.jpg", "can"), ANSWERS[1], ("VizWiz_val_99.jpg", "x")]  # last wins
    m = vizwiz.score(str(h.answers_file(tmp_path / "a.jsonl", pairs, h.TRUNCATED_TAIL)),
                     annotation_file=ann)
    assert (m["n_scored"], m["n_missing"], m["n_duplicates"], m["n_unknown"],
            m["n_truncated_lines"]) == (1, 1, 1, 1, 1)
    assert m["accuracy"] == pytest.approx(60.0)


def test_submission(tmp_path, h):
    qfile = h.write_jsonl(tmp_path / "llava_test.jsonl", [
        {"question_id": f"VizWiz_test_0000000{i}.jpg", "image": f"VizWiz_test_0000000{i}.jpg",
         "text": "?"} for i in (0, 1)])
    out = tmp_path / "sub.json"
    m = vizwiz.score(str(h.answers_file(tmp_path / "a.jsonl", [("VizWiz_test_00000000.jpg",
                                                                 "A Can.")])),
                     question_file=str(qfile), submission_out=str(out))
    assert json.loads(out.read_text()) == [
        {"image": "VizWiz_test_00000000.jpg", "answer": "can"},
        {"image": "VizWiz_test_00000001.jpg", "answer": ""}]
    assert m["n_submission_filled_empty"] == 1


def test_missing_file_and_field(ann, tmp_path, h):
    with pytest.raises(ScorerInputError, match="nope.json: file not found"):
        vizwiz.score("x", annotation_file=str(tmp_path / "nope.json"))
    bad = h.write_json(tmp_path / "bad.json", [{"image": "a.jpg"}])
    with pytest.raises(ScorerInputError, match=r"bad.json: entry 0: missing field 'answers'"):
        vizwiz.score("x", annotation_file=str(bad))


def test_cli(ann, tmp_path, h, cli_json):
    m = cli_json("vizwiz", "--annotation-file", ann, "--result-file",
                 h.answers_file(tmp_path / "a.jsonl", ANSWERS))
    assert m["accuracy"] == pytest.approx(80.0)
