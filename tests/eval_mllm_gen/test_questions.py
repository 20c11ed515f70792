"""Question readers on tiny files in each real format, incl. bad input."""

from __future__ import annotations

import csv
import json

import pytest

from eval_mllm.errors import EvalInputError
from eval_mllm.questions import get_chunk, load_image, read_questions, split_list

from .conftest import image_b64, make_image, write_jsonl

# LLaVA's model_vqa_science.py / model_vqa_mmbench.py, written out (not read from eval_mllm)
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."


def test_llava_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [
        {"question_id": 1, "image": "a.png", "category": "random",
         "text": "Is there a dog?\nAnswer the question using a single word or phrase."},
        {"question_id": "x2", "text": "No image here."}])
    qs = read_questions(path)
    assert [q.question_id for q in qs] == [1, "x2"]
    assert qs[0].image == "a.png" and qs[0].has_image and not qs[1].has_image
    assert qs[0].prompt == qs[0].text  # model_vqa_loader writes line["text"] as the prompt
    assert qs[0].source.endswith("q.jsonl: line 1")


@pytest.mark.parametrize("record, field", [({"image": "a.png", "text": "t"}, "question_id"),
                                           ({"question_id": 3, "image": "a.png"}, "text")])
def test_llava_jsonl_missing_field_names_file_and_line(tmp_path, record, field):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question_id": 1, "text": "ok"}, record])
    with pytest.raises(EvalInputError, match=rf"q\.jsonl: line 2: missing field '{field}'"):
        read_questions(path)


def test_missing_question_file(tmp_path):
    with pytest.raises(EvalInputError, match="question file not found"):
        read_questions(str(tmp_path / "nope.jsonl"))


def test_scienceqa_json(tmp_path):
    data = [{"id": "4", "image": "4/image.png", "conversations": [
                {"from": "human", "value": "Context: c\nWhich is bigger?\nA. cat\nB. ant\n<image>"},
                {"from": "gpt", "value": "A"}]},
            {"id": "7", "conversations": [{"from": "human", "value": "Which word rhymes?\nA. x\nB. y"}]}]
    path = tmp_path / "llava_test_CQM-A.json"
    path.write_text(json.dumps(data))
    qs = read_questions(str(path))
    assert [q.question_id for q in qs] == ["4", "7"]
    assert qs[0].text == "Context: c\nWhich is bigger?\nA. cat\nB. ant\n" + MC_INSTRUCTION
    assert qs[0].prompt == "<image>\n" + qs[0].text and qs[0].image == "4/image.png"
    assert qs[1].prompt == qs[1].text and not qs[1].has_image
    path.write_text(json.dumps([{"id": "1", "conversations": []}]))
    with pytest.raises(EvalInputError, match=r"entry 0: missing field 'conversations\[0\].value'"):
        read_questions(str(path))


def write_mmbench(path, rows, columns=("index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([r.get(c, "") for c in columns])
    return str(path)


def test_mmbench_tsv_prompt_and_rounds(tmp_path):
    path = write_mmbench(tmp_path / "mmb.tsv", [
        {"index": 10, "question": "What colour?", "hint": "A picture.", "A": "red", "B": "green", "C": "blue",
         "answer": "A", "category": "colour", "image": image_b64()},
        {"index": 11, "question": "Shape?", "hint": "nan", "A": "square", "B": "circle", "answer": "B",
         "image": image_b64()}])
    single = read_questions(path)
    assert [q.question_id for q in single] == [10, 11]
    assert single[0].text == "A picture.\nWhat colour?\nA. red\nB. green\nC. blue\n" + MC_INSTRUCTION
    assert single[0].prompt == "A picture.\nWhat colour?\nA. red\nB. green\nC. blue"
    assert single[1].prompt == "Shape?\nA. square\nB. circle"  # 'nan' hint dropped
    rounds = read_questions(path, all_rounds=True)
    assert [(q.question_id, q.extra["round_id"]) for q in rounds] == [(10, 0), (10, 1), (10, 2), (11, 0), (11, 1)]
    assert rounds[1].extra["options"] == ["green", "blue", "red"]
    assert rounds[1].extra["option_char"] == ["B", "C", "A"]
    assert "A. green\nB. blue\nC. red" in rounds[1].text
    assert len({q.key for q in rounds}) == 5
    assert load_image(rounds[0], "").size == (40, 32)


def test_mmbench_bad_image_names_line(tmp_path):
    path = write_mmbench(tmp_path / "mmb.tsv", [
        {"index": 1, "question": "q", "A": "a", "B": "b", "image": image_b64()},
        {"index": 2, "question": "q", "A": "a", "B": "b", "image": "bm90IGFuIGltYWdl"}])
    qs = read_questions(path)
    load_image(qs[0], "")
    with pytest.raises(EvalInputError, match=r"mmb\.tsv: line 3: image cannot be decoded"):
        load_image(qs[1], "")
    path = write_mmbench(tmp_path / "mmb2.tsv", [{"index": 1, "question": "q", "A": "a"}],
                         columns=("index", "question", "A", "B"))
    with pytest.raises(EvalInputError, match="missing column 'image'"):
        read_questions(path)


def test_missing_and_corrupt_image_files(tmp_path):
    make_image(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    path = write_jsonl(tmp_path / "q.jsonl", [{"question_id": i, "image": name, "text": "t"}
                                             for i, name in enumerate(["ok.png", "gone.png", "bad.png"])])
    ok, gone, bad = read_questions(path)
    assert load_image(ok, str(tmp_path)).mode == "RGB"
    with pytest.raises(EvalInputError, match=r"q\.jsonl: line 2: image not found: .*gone\.png"):
        load_image(gone, str(tmp_path))
    with pytest.raises(EvalInputError, match=r"q\.jsonl: line 3: image cannot be decoded: .*bad\.png"):
        load_image(bad, str(tmp_path))


def test_split_list_matches_llava():
    items = list(range(10))
    assert split_list(items, 3) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [x for k in range(4) for x in get_chunk(items, 4, k)] == items
    assert get_chunk(list(range(2)), 3, 2) == []  # ceil(2/3)=1 -> only 2 chunks
    with pytest.raises(EvalInputError):
        get_chunk(items, 2, 2)


def test_shared_question_ids_get_distinct_keys(tmp_path):
    # LLaVA's MME file: the two questions of an image share the image path as question_id
    path = write_jsonl(tmp_path / "mme.jsonl", [
        {"question_id": "count/0001.png", "image": "count/0001.png", "text": "Two? Please answer yes or no."},
        {"question_id": "count/0001.png", "image": "count/0001.png", "text": "Three? Please answer yes or no."},
        {"question_id": "count/0002.png", "image": "count/0002.png", "text": "One? Please answer yes or no."}])
    a, b, c = read_questions(path)
    assert a.shared_id and b.shared_id and not c.shared_id
    assert len({a.key, b.key, c.key}) == 3 and c.key == "count/0002.png"
