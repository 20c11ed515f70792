import pytest

from eval_mllm.scorers import pope
from eval_mllm.scorers.common import ScorerInputError

SUFFIX = "\nAnswer the question using a single word or phrase."

# (split, image, question, label); each label file numbers its lines from 1,
# the question file numbers questions 1..8 across splits (as LLaVA's does).
QUESTIONS = [
    ("adversarial", "img1.jpg", "Is there a dog in the image?", "yes"),
    ("adversarial", "img1.jpg", "Is there a cat in the image?", "no"),
    ("adversarial", "img2.jpg", "Is there a car in the image?", "yes"),
    ("adversarial", "img2.jpg", "Is there a bus in the image?", "no"),
    ("popular", "img1.jpg", "Is there a dog in the image?", "yes"),
    ("popular", "img3.jpg", "Is there a tree in the image?", "no"),
    ("random", "img4.jpg", "Is there a cup in the image?", "yes"),
    ("random", "img4.jpg", "Is there a fork in the image?", "no"),
]

ANSWERS = [
    (1, "Yes, there is a dog."),     # yes, label yes -> TP
    (2, "No"),                       # no,  label no  -> TN
    (3, "There is not a car. Yes."),  # first sentence has "not" -> no, label yes -> FN
    (4, "Yes"),                      # yes, label no  -> FP
    (5, "yes"),                      # TP
    (6, "no."),                      # TN
    (7, "Yes"),                      # TP
    (8, "Yes it is"),                # FP
]


@pytest.fixture
def files(tmp_path, h):
    ann = tmp_path / "coco"
    for split in ("adversarial", "popular", "random"):
        rows = [q for q in QUESTIONS if q[0] == split]
        h.write_jsonl(ann / f"coco_pope_{split}.json",
                      [{"question_id": i + 1, "image": img, "text": text, "label": label}
                       for i, (_, img, text, label) in enumerate(rows)])
    qfile = h.write_jsonl(tmp_path / "llava_pope_test.jsonl",
                          [{"question_id": i + 1, "image": img, "text": text + SUFFIX,
                            "category": split}
                           for i, (split, img, text, _) in enumerate(QUESTIONS)])
    return ann, qfile


def run(files, path):
    ann, qfile = files
    return pope.score(str(ann), str(qfile), str(path))


def test_parse_yes_no_like_llava():
    assert pope.parse_yes_no("No, there is not.") == "no"
    assert pope.parse_yes_no("Yes. But no cat.") == "yes"  # only the first sentence counts
    assert pope.parse_yes_no("The answer is no") == "no"
    assert pope.parse_yes_no("Not sure") == "yes"  # LLaVA only looks for No/not/no


def test_metrics_by_hand(files, tmp_path, h):
    m = run(files, h.answers_file(tmp_path / "ans.jsonl", ANSWERS))
    adv, popular, rnd = (m["splits"][s] for s in ("adversarial", "popular", "random"))
    # adversarial: TP=1 FP=1 TN=1 FN=1 -> acc 2/4, P 1/2, R 1/2, F1 1/2, yes 2/4
    assert (adv["tp"], adv["fp"], adv["tn"], adv["fn"]) == (1, 1, 1, 1)
    for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
        assert adv[key] == pytest.approx(50.0)
    # popular: TP=1 TN=1 -> everything 100, yes ratio 1/2
    assert popular["f1"] == pytest.approx(100.0) and popular["accuracy"] == pytest.approx(100.0)
    assert popular["yes_ratio"] == pytest.approx(50.0)
    # random: TP=1 FP=1 -> acc 1/2, P 1/2, R 1/1, F1 2*.5*1/1.5 = 2/3, yes 2/2
    assert rnd["accuracy"] == pytest.approx(50.0)
    assert rnd["precision"] == pytest.approx(50.0) and rnd["recall"] == pytest.approx(100.0)
    assert rnd["f1"] == pytest.approx(200 / 3)
    assert rnd["yes_ratio"] == pytest.approx(100.0)
    # means over the 3 splits: F1 (50 + 100 + 200/3)/3 = 650/9, acc (50+100+50)/3
    assert m["f1_mean"] == pytest.approx(650 / 9)
    assert m["accuracy_mean"] == pytest.approx(200 / 3)
    assert (m["n_questions"], m["n_scored"], m["n_missing"]) == (8, 8, 0)


def test_shuffled_answers_same_result(files, tmp_path, h):
    base = run(files, h.answers_file(tmp_path / "a.jsonl", ANSWERS))
    other = run(files, h.answers_file(tmp_path / "b.jsonl", h.shuffled(ANSWERS)))
    assert other == base


def test_truncated_last_line_skipped(files, tmp_path, h):
    base = run(files, h.answers_file(tmp_path / "a.jsonl", ANSWERS))
    m = run(files, h.answers_file(tmp_path / "b.jsonl", ANSWERS, tail=h.TRUNCATED_TAIL))
    assert m["n_truncated_lines"] == 1 and m["f1_mean"] == base["f1_mean"]
    assert any("truncated" in w for w in m["warnings"])


def test_missing_duplicate_unknown_counted(files, tmp_path, h):
    # drop question 8; repeat question 1 with the opposite answer; add id 99
    pairs = [(1, "No")] + ANSWERS[:7] + [(99, "Yes")]
    m = run(files, h.answers_file(tmp_path / "a.jsonl", pairs))
    assert (m["n_scored"], m["n_missing"], m["n_duplicates"], m["n_unknown"]) == (7, 1, 1, 1)
    assert m["splits"]["adversarial"]["tp"] == 1  # the last answer for id 1 kept
    # random now has TP=1 only -> acc 100, F1 100
    assert m["splits"]["random"]["f1"] == pytest.approx(100.0)


def test_missing_file_and_field(files, tmp_path, h):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(ScorerInputError, match="nope.jsonl: file not found"):
        run(files, missing)
    bad = h.write_jsonl(tmp_path / "bad.jsonl", [h.answer(1, "Yes"), {"text": "No"}])
    with pytest.raises(ScorerInputError, match=r"bad.jsonl: line 2: missing field 'question_id'"):
        run(files, bad)


def test_question_without_label_is_an_error(files, tmp_path, h):
    ann, _ = files
    qfile = h.write_jsonl(tmp_path / "q.jsonl", [
        {"question_id": 1, "image": "img9.jpg", "text": "Is there a cow?", "category": "random"}])
    with pytest.raises(ScorerInputError, match="no label in coco_pope_random.json"):
        pope.score(str(ann), str(qfile), str(h.answers_file(tmp_path / "a.jsonl", [(1, "y")])))


def test_cli(files, tmp_path, h, cli_json):
    ann, qfile = files
    result = h.answers_file(tmp_path / "ans.jsonl", ANSWERS)
    m = cli_json("pope", "--annotation-dir", ann, "--question-file", qfile,
                 "--result-file", result)
    assert m["benchmark"] == "pope" and m["f1_mean"] == pytest.approx(650 / 9)
