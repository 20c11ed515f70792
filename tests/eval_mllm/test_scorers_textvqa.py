import pytest

from eval_mllm.scorers import textvqa
from eval_mllm.scorers.common import ScorerInputError

DATA = [
    {"question_id": 100, "image_id": "img_a", "question": "What brand is this?",
     "answers": ["Sony"] * 4 + ["canon"] * 6},
    {"question_id": 101, "image_id": "img_a", "question": "What number is shown?",
     "answers": ["two"] * 2 + ["3"] * 8},
    {"question_id": 102, "image_id": "img_b", "question": "What color is the sign?",
     "answers": ["red"] * 10},
]
ANSWERS = [(100, "sony"), (101, "2"), (102, "blue")]
# q100: 4 GT "sony": every leave-one-out subset keeps >= 3 matches -> 1.0
# q101: pred "2" = normalised "two", 2 GT matches: the 2 matching subsets have 1 -> 1/3,
#       the 8 others have 2 -> 2/3: (2/3 + 16/3)/10 = 0.6
# q102: no match -> 0
# accuracy = (1 + 0.6 + 0)/3 = 53.33%
EXPECTED = 100 * 1.6 / 3


@pytest.fixture
def ann(tmp_path, h):
    return str(h.write_json(tmp_path / "TextVQA_0.5.1_val.json",
                            {"dataset_name": "textvqa", "data": DATA}))


def test_prompt_helpers():
    assert textvqa.build_textvqa_prompt("What is it?", ["a", "b"]) == (
        "What is it?\nReference OCR token: a, b\n"
        "Answer the question using a single word or phrase.")
    assert textvqa.build_textvqa_prompt("What is it?", []) == (
        "What is it?\nAnswer the question using a single word or phrase.")
    assert textvqa.prompt_question("Reference OCR token: x\nWhat?\nAnswer it.") == "what?"
    assert textvqa.prompt_question("What IS it?\nReference OCR token: x\nAnswer.") == "what is it?"


def test_by_question_id(ann, tmp_path, h):
    m = textvqa.score(ann, str(h.answers_file(tmp_path / "a.jsonl", ANSWERS)))
    assert m["accuracy"] == pytest.approx(EXPECTED)
    assert (m["n_questions"], m["n_scored"], m["n_missing"]) == (3, 3, 0)


def test_llava_prompt_fallback(ann, tmp_path, h):
    # LLaVA's question file: question_id = image id (shared by two questions)
    questions = [{"question_id": d["image_id"], "image": d["image_id"] + ".jpg",
                  "text": textvqa.build_textvqa_prompt(d["question"], ["tok"])} for d in DATA]
    qfile = h.write_jsonl(tmp_path / "llava_textvqa.jsonl", questions)
    answers = [h.answer(q["question_id"], text, prompt=q["text"])
               for q, (_, text) in zip(questions, ANSWERS, strict=True)]
    rfile = h.write_jsonl(tmp_path / "a.jsonl", h.shuffled(answers))
    m = textvqa.score(ann, str(rfile), str(qfile))
    assert m["accuracy"] == pytest.approx(EXPECTED) and m["n_duplicates"] == 0
    # without the question file the answer's question_id is taken as the image id
    assert textvqa.score(ann, str(rfile))["accuracy"] == pytest.approx(EXPECTED)


def test_shuffled_answers_same_result(ann, tmp_path, h):
    a = textvqa.score(ann, str(h.answers_file(tmp_path / "a.jsonl", ANSWERS)))
    b = textvqa.score(ann, str(h.answers_file(tmp_path / "b.jsonl", h.shuffled(ANSWERS))))
    assert a == b


def test_truncated_missing_duplicate_unknown(ann, tmp_path, h):
    pairs = [(100, "sony"), (101, "2"), (100, "canon"), (999, "x")]
    m = textvqa.score(ann, str(h.answers_file(tmp_path / "a.jsonl", pairs, h.TRUNCATED_TAIL)))
    assert (m["n_scored"], m["n_missing"], m["n_duplicates"], m["n_unknown"],
            m["n_truncated_lines"]) == (2, 1, 1, 1, 1)
    assert m["accuracy"] == pytest.approx(100 * 1.6 / 2)  # (1 + 0.6)/2 over the answered


def test_missing_file_and_field(ann, tmp_path, h):
    with pytest.raises(ScorerInputError, match="nope.json: file not found"):
        textvqa.score(str(tmp_path / "nope.json"), "x")
    bad = h.write_jsonl(tmp_path / "bad.jsonl", [{"question_id": 100, "prompt": "q"}])
    with pytest.raises(ScorerInputError, match=r"bad.jsonl: line 1: missing field 'text'"):
        textvqa.score(ann, str(bad))


def test_cli(ann, tmp_path, h, cli_json):
    m = cli_json("textvqa", "--annotation-file", ann, "--result-file",
                 h.answers_file(tmp_path / "a.jsonl", ANSWERS))
    assert m["accuracy"] == pytest.approx(EXPECTED)


def test_counts_prompts_with_ocr_tokens(ann, tmp_path, h):
    """The protocol is read from the prompts the answers record (the report marks it)."""
    prompts = [textvqa.build_textvqa_prompt(d["question"], ["tok"] if i else []) for i, d in enumerate(DATA)]
    rfile = h.write_jsonl(tmp_path / "a.jsonl", [h.answer(d["question_id"], "x", prompt=p)
                                                 for d, p in zip(DATA, prompts, strict=True)])
    m = textvqa.score(ann, rfile)
    assert (m["n_prompts"], m["n_prompts_with_ocr_tokens"]) == (len(DATA), len(DATA) - 1)
    assert textvqa.has_ocr_tokens("OCR tokens: a, b Question: q? Short answer:")
    assert not textvqa.has_ocr_tokens("What does the sign say?\nAnswer the question using a single word or phrase.")
