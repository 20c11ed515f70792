"""Generation on a tiny LLaVA (llava-torch + CLIP-MoE tower) and a tiny transformers Llava."""

from __future__ import annotations

import json
import os

import pytest

from eval_mllm.__main__ import main
from eval_mllm.generate import generate
from eval_mllm.models import HFLlavaModel, LlavaTorchModel, load_model
from eval_mllm.questions import read_questions

from .conftest import make_image, write_jsonl

ANSWER_KEYS = ["question_id", "prompt", "text", "answer_id", "model_id", "metadata"]


def read_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def model(tiny_llava):
    return load_model(tiny_llava, max_new_tokens=6, min_new_tokens=2, device="cpu")


def test_cli_answer_file_format(tiny_llava, vqa_set, tmp_path, capsys):
    qfile, images = vqa_set
    answers = str(tmp_path / "out" / "answers.jsonl")
    rc = main(["generate", "--model-path", tiny_llava, "--question-file", qfile, "--image-folder", images,
               "--answers-file", answers, "--max-new-tokens", "5", "--min-new-tokens", "2", "--device", "cpu",
               "--no-progress"])
    assert rc == 0
    records = read_lines(answers)
    questions = read_lines(qfile)
    assert [r["question_id"] for r in records] == [q["question_id"] for q in questions]
    for r, q in zip(records, questions):
        assert list(r) == ANSWER_KEYS  # exactly model_vqa_loader's keys, in its order
        assert r["prompt"] == q["text"] and r["metadata"] == {} and r["model_id"] == "llava-tiny-clipmoe"
        assert isinstance(r["answer_id"], str) and len(r["answer_id"]) == 22  # shortuuid
        assert isinstance(r["text"], str) and r["text"]
    assert len({r["answer_id"] for r in records}) == len(records)
    assert "6 generated, 0 already answered" in capsys.readouterr().out


def test_resume_skips_answered(model, vqa_set, tmp_path):
    qfile, images = vqa_set
    questions = read_questions(qfile)
    answers = str(tmp_path / "a.jsonl")
    first = generate(questions[:4], model, answers, images, progress=False)
    before = read_lines(answers)
    second = generate(questions, model, answers, images, progress=False)
    after = read_lines(answers)
    assert (first.n_generated, second.n_resumed, second.n_generated) == (4, 4, 2)
    assert after[:4] == before  # untouched, same answer_ids
    assert [r["question_id"] for r in after] == [q.question_id for q in questions]
    third = generate(questions, model, answers, images, progress=False)
    assert (third.n_generated, len(read_lines(answers))) == (0, 6)


def test_truncated_last_line_is_redone(model, vqa_set, tmp_path):
    qfile, images = vqa_set
    questions = read_questions(qfile)
    answers = str(tmp_path / "a.jsonl")
    generate(questions, model, answers, images, progress=False)
    full = read_lines(answers)
    with open(answers, "rb") as f:
        data = f.read()
    with open(answers, "wb") as f:  # a writer killed mid-line
        f.write(data[:-15])
    stats = generate(questions, model, answers, images, progress=False)
    assert stats.n_truncated_removed == 1 and stats.n_generated == 1 and stats.n_resumed == 5
    again = read_lines(answers)  # every line valid JSON again
    assert [r["question_id"] for r in again] == [r["question_id"] for r in full]
    assert again[-1]["text"] == full[-1]["text"] and again[-1]["answer_id"] != full[-1]["answer_id"]


@pytest.mark.slow  # ~10-20 s on 2 shared cores
def test_chunks_merge_to_single_run(model, vqa_set, tmp_path):
    qfile, images = vqa_set
    questions = read_questions(qfile)
    single = str(tmp_path / "single.jsonl")
    generate(questions, model, single, images, progress=False)
    parts = [str(tmp_path / f"chunk{k}.jsonl") for k in range(4)]
    for k, part in enumerate(parts):
        generate(questions, model, part, images, num_chunks=4, chunk_idx=k, progress=False)
    merged = str(tmp_path / "merged.jsonl")
    # parts given out of order: merge restores question order
    assert main(["merge", merged, *reversed(parts), "--question-file", qfile]) == 0
    a, b = read_lines(single), read_lines(merged)
    assert [(r["question_id"], r["text"]) for r in a] == [(r["question_id"], r["text"]) for r in b]


@pytest.mark.slow  # ~10-20 s on 2 shared cores
def test_batch4_equals_batch1(model, vqa_set, tmp_path):
    qfile, images = vqa_set
    questions = read_questions(qfile)
    # Precondition, not a check of the code: prompts of different lengths, so batches need padding.
    assert len({len(q.text) for q in questions[:4]}) > 1
    generate(questions, model, str(tmp_path / "b1.jsonl"), images, batch_size=1, progress=False)
    generate(questions, model, str(tmp_path / "b4.jsonl"), images, batch_size=4, progress=False)
    b1, b4 = read_lines(tmp_path / "b1.jsonl"), read_lines(tmp_path / "b4.jsonl")
    assert [r["text"] for r in b1] == [r["text"] for r in b4]


def test_bad_image_is_one_clear_error_or_skipped(tiny_llava, tmp_path, capsys):
    make_image(tmp_path / "ok.png")
    qfile = write_jsonl(tmp_path / "q.jsonl", [{"question_id": 1, "image": "ok.png", "text": "a?"},
                                               {"question_id": 2, "image": "missing.png", "text": "b?"},
                                               {"question_id": 3, "image": "ok.png", "text": "c?"}])
    base = ["generate", "--model-path", tiny_llava, "--question-file", qfile, "--image-folder", str(tmp_path),
            "--max-new-tokens", "2", "--device", "cpu", "--no-progress"]
    rc = main(base + ["--answers-file", str(tmp_path / "a.jsonl")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert rc == 2 and len(err) == 1
    assert "q.jsonl: line 2: image not found" in err[0]
    assert not os.path.exists(tmp_path / "a.jsonl")  # checked before loading the model
    rc = main(base + ["--answers-file", str(tmp_path / "b.jsonl"), "--skip-bad-images"])
    assert rc == 0 and "1 skipped (bad image)" in capsys.readouterr().out
    assert [r["question_id"] for r in read_lines(tmp_path / "b.jsonl")] == [1, 3]


def test_progress_counts_a_skipped_question_once(tmp_path, monkeypatch):
    import tqdm

    updates = []

    class Bar:  # records what generate() reports to its progress bar
        def __init__(self, total, **kwargs):
            self.total = total

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            updates.append(n)

    class Echo:  # a model that repeats the question: no weights needed
        model_id = "echo"

        def answer(self, items):
            return [text for _, text in items]

    monkeypatch.setattr(tqdm, "tqdm", Bar)
    make_image(tmp_path / "ok.png")
    qfile = write_jsonl(tmp_path / "q.jsonl", [{"question_id": 1, "image": "ok.png", "text": "a?"},
                                               {"question_id": 2, "image": "missing.png", "text": "b?"},
                                               {"question_id": 3, "image": "ok.png", "text": "c?"}])
    stats = generate(read_questions(qfile), Echo(), str(tmp_path / "a.jsonl"), str(tmp_path), batch_size=3,
                     skip_bad_images=True)
    assert (stats.n_generated, stats.n_skipped_bad_image) == (2, 1)
    assert sum(updates) == 3  # each question once, the skipped one included


def test_missing_question_file_exit_2(tiny_llava, tmp_path, capsys):
    rc = main(["generate", "--model-path", tiny_llava, "--question-file", str(tmp_path / "none.jsonl"),
               "--answers-file", str(tmp_path / "a.jsonl")])
    assert rc == 2 and "none.jsonl: question file not found" in capsys.readouterr().err


def test_llava_torch_checkpoint_kind(model):
    assert isinstance(model, LlavaTorchModel)
    from clipmoe_encoder.tower import CLIPMoEVisionTower
    assert isinstance(model.model.get_vision_tower(), CLIPMoEVisionTower)  # the MoE tower, not a dense CLIP


def _hf_round_trip(path, vqa_set, tmp_path):
    qfile, images = vqa_set
    questions = read_questions(qfile)
    hf = load_model(path, max_new_tokens=5, min_new_tokens=2, device="cpu")
    assert isinstance(hf, HFLlavaModel)
    generate(questions, hf, str(tmp_path / "b1.jsonl"), images, batch_size=1, progress=False)
    generate(questions, hf, str(tmp_path / "b3.jsonl"), images, batch_size=3, progress=False)
    b1, b3 = read_lines(tmp_path / "b1.jsonl"), read_lines(tmp_path / "b3.jsonl")
    assert all(list(r) == ANSWER_KEYS and r["text"] for r in b1)
    assert [r["text"] for r in b1] == [r["text"] for r in b3]
    assert b1[0]["model_id"] == os.path.basename(path)
    return hf


def test_transformers_llava_checkpoint_dense_clip(tiny_hf_llava_clip, vqa_set, tmp_path):
    _hf_round_trip(tiny_hf_llava_clip, vqa_set, tmp_path)


def test_transformers_llava_checkpoint_clipmoe(tiny_hf_llava, vqa_set, tmp_path):
    hf = _hf_round_trip(tiny_hf_llava, vqa_set, tmp_path)
    assert type(hf.model.model.vision_tower).__name__ == "CLIPMoEVisionModel"


def test_scienceqa_mixed_text_only_and_image_batches(model, tmp_path):
    make_image(tmp_path / "q1.png")
    make_image(tmp_path / "q3.png", (20, 200, 20))
    def turn(text):
        return [{"from": "human", "value": text}]

    data = [{"id": "1", "image": "q1.png", "conversations": turn("Context: x\nWhich?\nA. a\nB. b\n<image>")},
            {"id": "2", "conversations": turn("Which word?\nA. cat\nB. dog")},
            {"id": "3", "image": "q3.png", "conversations": turn("<image>\nWhat colour?\nA. red\nB. green")}]
    path = tmp_path / "llava_test_CQM-A.json"
    path.write_text(json.dumps(data))
    questions = read_questions(str(path))
    generate(questions, model, str(tmp_path / "b1.jsonl"), str(tmp_path), batch_size=1, progress=False)
    generate(questions, model, str(tmp_path / "b3.jsonl"), str(tmp_path), batch_size=3, progress=False)
    b1, b3 = read_lines(tmp_path / "b1.jsonl"), read_lines(tmp_path / "b3.jsonl")
    assert [r["question_id"] for r in b1] == ["1", "2", "3"]
    assert [r["text"] for r in b1] == [r["text"] for r in b3]
    instruction = "\nAnswer with the option's letter from the given choices directly."
    # model_vqa_science's prompt field: "<image>\n" only for problems with an image
    assert b1[0]["prompt"] == "<image>\nContext: x\nWhich?\nA. a\nB. b" + instruction
    assert b1[1]["prompt"] == "Which word?\nA. cat\nB. dog" + instruction


def test_prompt_is_llava_vicuna_v1(model):
    system = ("A chat between a curious user and an artificial intelligence assistant. "
              "The assistant gives helpful, detailed, and polite answers to the user's questions.")
    assert model.prompt("What colour?", True) == f"{system} USER: <image>\nWhat colour? ASSISTANT:"
    assert model.prompt("Name a colour.", False) == f"{system} USER: Name a colour. ASSISTANT:"
    model.conv_mode = "nope"
    try:
        with pytest.raises(Exception, match="not one of LLaVA's templates"):
            model.prompt("x", True)
    finally:
        model.conv_mode = "vicuna_v1"


def test_repair_keeps_a_whole_last_line_without_newline(tmp_path):
    from eval_mllm.generate import repair_and_read

    path = tmp_path / "a.jsonl"
    path.write_text('{"question_id": 1, "text": "a"}\n{"question_id": 2, "text": "b"}')
    records, n_cut = repair_and_read(str(path))
    assert [r["question_id"] for r in records] == [1, 2] and n_cut == 0
    assert path.read_text().endswith('"b"}\n')
    path.write_text('{"question_id": 1, "text": "a"}\n{"question_id": 2, "te')
    records, n_cut = repair_and_read(str(path))
    assert [r["question_id"] for r in records] == [1] and n_cut == 1
    assert path.read_text() == '{"question_id": 1, "text": "a"}\n'
    path.write_text('{"question_id": 1, "te\n{"question_id": 2, "text": "b"}\n')
    with pytest.raises(Exception, match="line 1: not valid JSON"):
        repair_and_read(str(path))


def test_merge_without_question_file_concatenates_and_dedupes(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"question_id": 1, "prompt": "p", "text": "x"},
                                           {"question_id": 2, "prompt": "p", "text": "y"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"question_id": 2, "prompt": "p", "text": "again"},
                                           {"question_id": 3, "prompt": "p", "text": "z"}])
    with open(b, "a") as f:
        f.write('{"question_id": 4, "pro')  # a chunk killed mid-line
    out = str(tmp_path / "m.jsonl")
    assert main(["merge", out, a, b]) == 0
    # the last answer to an id wins, at the first one's place (as the scorers read ids)
    assert [(r["question_id"], r["text"]) for r in read_lines(out)] == [(1, "x"), (2, "again"), (3, "z")]
    assert main(["merge", out, a, str(tmp_path / "missing.jsonl")]) == 2
