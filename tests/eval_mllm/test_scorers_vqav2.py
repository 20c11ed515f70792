import json

import pytest

from eval_mllm.scorers import vqav2
from eval_mllm.scorers.common import ScorerInputError


def gt(*answers):
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
            for i, a in enumerate(answers)]


ANNOTATIONS = {"annotations": [
    {"question_id": 1, "answer_type": "yes/no", "multiple_choice_answer": "yes",
     "answers": gt(*["yes"] * 10)},
    {"question_id": 2, "answer_type": "number", "multiple_choice_answer": "3",
     "answers": gt("two", *["3"] * 9)},
    {"question_id": 3, "answer_type": "other", "multiple_choice_answer": "blue",
     "answers": gt(*["red"] * 3, *["blue"] * 7)},
]}
ANSWERS = [(1, "Yes."), (2, "Two"), (3, "red")]
# q1: "yes" matches all 10 -> 1.0
# q2: "Two" is submitted as "2"; the official evaluation gives the ground truth only its
#     punctuation step, so "two" stays "two" and nothing matches -> 0 (the m4c rule, which
#     turns the GT "two" into "2", would give 0.3)
# q3: "red" matches 3: their subsets have 2 -> 2/3, the 7 others have 3 -> 1: (2+7)/10 = 0.9
# accuracy = (1 + 0 + 0.9)/3 = 63.33%


@pytest.fixture
def ann(tmp_path, h):
    return str(h.write_json(tmp_path / "v2_mscoco_val2014_annotations.json", ANNOTATIONS))


def test_vqa_accuracy_by_hand():
    assert vqav2.vqa_accuracy("red", ["red"] * 2 + ["blue"] * 8) == pytest.approx(0.6)
    assert vqav2.vqa_accuracy("red", ["red"] * 4 + ["blue"] * 6) == pytest.approx(1.0)
    assert vqav2.vqa_accuracy("red", ["red"] + ["blue"] * 9) == pytest.approx(0.3)


def test_accuracy_by_hand(ann, tmp_path, h):
    m = vqav2.score(str(h.answers_file(tmp_path / "a.jsonl", ANSWERS)), annotation_file=ann)
    assert m["accuracy"] == pytest.approx(190 / 3)
    assert m["per_answer_type"] == pytest.approx({"yes/no": 100.0, "number": 0.0, "other": 90.0})
    assert vqav2.vqa_accuracy("Two", ["two"] + ["3"] * 9) == pytest.approx(0.3)  # m4c rule
    assert (m["n_questions"], m["n_scored"]) == (3, 3)


def test_shuffled_answers_same_result(ann, tmp_path, h):
    a = vqav2.score(str(h.answers_file(tmp_path / "a.jsonl", ANSWERS)), annotation_file=ann)
    b = vqav2.score(str(h.answers_file(tmp_path / "b.jsonl", h.shuffled(ANSWERS))),
                    annotation_file=ann)
    assert a == b


def test_truncated_missing_duplicate_unknown(ann, tmp_path, h):
    pairs = [(1, "no"), (1, "yes"), (3, "red"), (77, "yes")]  # the last answer for 1 wins
    m = vqav2.score(str(h.answers_file(tmp_path / "a.jsonl", pairs, h.TRUNCATED_TAIL)),
                    annotation_file=ann)
    assert (m["n_scored"], m["n_missing"], m["n_duplicates"], m["n_unknown"],
            m["n_truncated_lines"]) == (2, 1, 1, 1, 1)
    assert m["accuracy"] == pytest.approx(95.0)  # (1 + 0.9)/2


def test_submission_covers_all_test_ids(tmp_path, h):
    qfile = h.write_jsonl(tmp_path / "llava_vqav2_mscoco_test2015.jsonl",
                          [{"question_id": i, "image": f"{i}.jpg", "text": "?"} for i in (1, 2, 3, 4)])
    out = tmp_path / "upload" / "sub.json"
    m = vqav2.score(str(h.answers_file(tmp_path / "a.jsonl", ANSWERS)),
                    question_file=str(qfile), submission_out=str(out))
    assert json.loads(out.read_text()) == [
        {"question_id": 1, "answer": "yes"}, {"question_id": 2, "answer": "2"},
        {"question_id": 3, "answer": "red"}, {"question_id": 4, "answer": ""}]
    assert m["n_submission_filled_empty"] == 1 and m["n_missing"] == 1
    assert m["accuracy"] is None


def test_missing_file_and_field(ann, tmp_path, h):
    with pytest.raises(ScorerInputError, match="nope.jsonl: file not found"):
        vqav2.score(str(tmp_path / "nope.jsonl"), annotation_file=ann)
    bad = h.write_json(tmp_path / "bad_ann.json", {"annotations": [{"question_id": 1}]})
    with pytest.raises(ScorerInputError, match=r"bad_ann.json: annotations\[0\]: missing field 'answers'"):
        vqav2.score(str(h.answers_file(tmp_path / "a.jsonl", ANSWERS)), annotation_file=str(bad))


def test_cli(ann, tmp_path, h, cli_json):
    m = cli_json("vqav2", "--annotation-file", ann, "--result-file",
                 h.answers_file(tmp_path / "a.jsonl", ANSWERS))
    assert m["accuracy"] == pytest.approx(190 / 3)
