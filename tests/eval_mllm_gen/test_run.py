"""`python -m eval_mllm run` end to end on tiny POPE- and MMBench-format data written here."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from eval_mllm.__main__ import main
from eval_mllm.scorers import pope
from eval_mllm.scorers.pope import parse_yes_no

from .conftest import COLOURS, image_b64, make_image, write_jsonl
from .test_questions import write_mmbench


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def make_data_root(root):
    """POPE: 3 splits x 2 questions on COCO-named images; MMBench: 3 questions (2-4 options)."""
    pope = os.path.join(root, "pope")
    os.makedirs(os.path.join(pope, "coco"))
    os.makedirs(os.path.join(pope, "val2014"))
    questions, qid = [], 1
    for split in ("adversarial", "popular", "random"):
        labels = []
        for k, (obj, label) in enumerate([("dog", "yes"), ("car", "no")]):
            image = f"COCO_val2014_{qid:012d}.jpg"
            make_image(os.path.join(pope, "val2014", image), COLOURS[qid % len(COLOURS)])
            text = f"Is there a {obj} in the image?"
            labels.append({"question_id": k + 1, "image": image, "text": text, "label": label})
            questions.append({"question_id": qid, "image": image, "category": split,
                              "text": text + "\nAnswer the question using a single word or phrase."})
            qid += 1
        write_jsonl(os.path.join(pope, "coco", f"coco_pope_{split}.json"), labels)
    write_jsonl(os.path.join(pope, "llava_pope_test.jsonl"), questions)
    os.makedirs(os.path.join(root, "mmbench"))
    write_mmbench(os.path.join(root, "mmbench", "mmbench_dev_20230712.tsv"), [
        {"index": 0, "question": "What colour is it?", "hint": "nan", "A": "red", "B": "green", "answer": "A",
         "category": "colour", "image": image_b64(COLOURS[0])},
        {"index": 1, "question": "Which shape?", "hint": "Look.", "A": "square", "B": "circle", "C": "star",
         "D": "line", "answer": "A", "category": "shape", "image": image_b64(COLOURS[1])},
        {"index": 2, "question": "How many?", "hint": "", "A": "one", "B": "two", "C": "three", "answer": "A",
         "category": "count", "image": image_b64(COLOURS[2])}])
    return root


@pytest.mark.slow
def test_run_pope_and_mmbench(tiny_llava, tmp_path, capsys):
    data = make_data_root(str(tmp_path / "data"))
    out = str(tmp_path / "out")
    argv = ["run", "--model", tiny_llava, "--benchmarks", "pope,mmbench", "--data-root", data, "--out", out,
            "--all-rounds", "--max-new-tokens", "3", "--min-new-tokens", "1", "--device", "cpu",
            "--batch-size", "3", "--no-progress"]
    assert main(argv) == 0
    results = json.loads(read(os.path.join(out, "results.json")))
    pope, mmb = results["benchmarks"]["pope"], results["benchmarks"]["mmbench"]
    assert pope["generation"]["n_generated"] == 6 and mmb["generation"]["n_generated"] == 2 + 4 + 3

    # POPE accuracy recomputed here from the answer file and the labels
    answers = [json.loads(line) for line in read(os.path.join(out, "answers", "pope.jsonl")).splitlines()]
    labels = {1: "yes", 2: "no"}
    per_split = {}
    for a in answers:
        split = ("adversarial", "popular", "random")[(a["question_id"] - 1) // 2]
        per_split.setdefault(split, []).append(parse_yes_no(a["text"]) == labels[(a["question_id"] - 1) % 2 + 1])
    expected_acc = sum(100.0 * sum(v) / len(v) for v in per_split.values()) / 3
    acc_row = next(r for r in pope["rows"] if r["metric"].startswith("accuracy"))
    assert acc_row["value"] == pytest.approx(expected_acc) and acc_row["chance"] == 50.0
    assert pope["metrics"]["n_scored"] == 6 and pope["metrics"]["n_missing"] == 0

    # MMBench circular: chance = mean over questions of (1/n)^n
    circ = mmb["rows"][0]
    assert mmb["metrics"]["circular"] is True
    assert circ["chance"] == pytest.approx(100 * ((1 / 2) ** 2 + (1 / 4) ** 4 + (1 / 3) ** 3) / 3)
    assert mmb["rows"][1]["chance"] == pytest.approx(100 * (1 / 2 + 1 / 4 + 1 / 3) / 3)

    md = read(os.path.join(out, "results.md"))
    for needle in ("LLaVA-1.5-7B", "LLaVA-1.5-13B", "Paper: Vicuna-7B + CLIP-MoE", "Paper: Vicuna-13B + CLIP-MoE",
                   "| 85.9 |", "| 86.4 |", "| 69.3 |", "MODEL_ZOO.md", "Table 3", "chance"):
        assert needle in md, needle
    assert "| pope | accuracy, mean over splits |" in md and "| 50.00 |" in md

    # `score` delegates to the scorers' CLI: same POPE F1 from the same answer file
    capsys.readouterr()
    assert main(["score", "pope", "--annotation-dir", os.path.join(data, "pope", "coco"), "--question-file",
                 os.path.join(data, "pope", "llava_pope_test.jsonl"), "--result-file",
                 os.path.join(out, "answers", "pope.jsonl"), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scored["f1_mean"] == pytest.approx(pope["headline"])

    # Rerun: everything is reused, nothing generated, same scores; the model is not even loaded
    # (a checkpoint folder without weights would fail to load)
    unloadable = tmp_path / "llava-without-weights"
    unloadable.mkdir()
    (unloadable / "config.json").write_text('{"model_type": "llava_llama"}')
    rerun = [str(unloadable) if a == tiny_llava else a for a in argv]
    assert main(rerun) == 0
    again = json.loads(read(os.path.join(out, "results.json")))
    assert again["benchmarks"]["pope"]["generation"]["n_resumed"] == 6
    assert again["benchmarks"]["pope"]["generation"]["n_generated"] == 0
    assert again["benchmarks"]["mmbench"]["headline"] == mmb["headline"]


def test_pope_scorer_matches_llava_eval_pope(tmp_path):
    """LLaVA's own scorer (llava/eval/eval_pope.py from the llava-torch wheel) and ours read the same
    hand-written answer file and agree per split. Each split has a true "yes" answer: eval_pope
    divides by zero without one."""
    data = make_data_root(str(tmp_path / "data"))
    annotations = os.path.join(data, "pope", "coco")
    qfile = os.path.join(data, "pope", "llava_pope_test.jsonl")
    # question ids 1-6: (adversarial, popular, random) x (label yes, label no)
    texts = ["Yes, there is a dog.", "Yes.", "Yes", "No, there is not.", "yes, a dog", "There is no car."]
    answers = write_jsonl(tmp_path / "answers.jsonl",
                          [{"question_id": i + 1, "text": t} for i, t in enumerate(texts)])
    proc = subprocess.run([sys.executable, "-m", "llava.eval.eval_pope", "--annotation-dir", annotations,
                           "--question-file", qfile, "--result-file", answers],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    llava, split = {}, None
    for line in proc.stdout.splitlines():
        if line.startswith("Category:"):
            split = line.split()[1].rstrip(",")
        elif line.startswith(("Accuracy:", "F1 score:")):
            llava[split, line.split(":")[0]] = 100 * float(line.split()[-1])
    ours = pope.score(annotations, qfile, answers)["splits"]
    expected = {(s, name): ours[s][key] for s in ours for name, key in (("Accuracy", "accuracy"), ("F1 score", "f1"))}
    assert len(expected) == 6 and llava == pytest.approx(expected)
    assert ours["adversarial"]["accuracy"] == 50.0  # the "Yes." to a "no" question is wrong


def test_run_missing_data_is_one_error(tiny_llava, tmp_path, capsys):
    rc = main(["run", "--model", tiny_llava, "--benchmarks", "pope,gqa", "--data-root", str(tmp_path),
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "benchmark data not found" in err and "llava_pope_test.jsonl" in err
    assert "testdev_balanced_questions.json" in err
    rc = main(["run", "--model", tiny_llava, "--benchmarks", "pope,nope", "--data-root", str(tmp_path),
               "--out", str(tmp_path / "out")])
    assert rc == 2 and "unknown ['nope']" in capsys.readouterr().err


def make_mme_and_sqa(root):
    """MME: 'existence' in the images/ + questions_answers_YN/ layout, 'count' flat, LLaVA's
    question file without answers. ScienceQA: 3 test problems (2 with images, 2-4 choices)."""
    release = os.path.join(root, "MME", "MME_Benchmark_release_version")
    questions = []
    for subtask, nested in (("existence", True), ("count", False)):
        img_dir = os.path.join(release, subtask, "images") if nested else os.path.join(release, subtask)
        qa_dir = os.path.join(release, subtask, "questions_answers_YN") if nested else img_dir
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(qa_dir, exist_ok=True)
        for k in range(2):
            name = f"{k:04d}"
            make_image(os.path.join(img_dir, name + ".png"), COLOURS[k])
            qa = [(f"Is there a {subtask} thing {k}? Please answer yes or no.", "Yes"),
                  (f"Is there no {subtask} thing {k}? Please answer yes or no.", "No")]
            with open(os.path.join(qa_dir, name + ".txt"), "w") as f:
                f.writelines(f"{q}\t{a}\n" for q, a in qa)
            rel = f"{subtask}/images/{name}.png" if nested else f"{subtask}/{name}.png"
            if not nested:  # the other form in LLaVA's file: MME's suffix replaced by the short-answer line
                short = "\nAnswer the question using a single word or phrase."
                qa = [(q.replace(" Please answer yes or no.", short), a) for q, a in qa]
            questions += [{"question_id": rel, "image": rel, "text": q, "category": subtask} for q, _ in qa]
    write_jsonl(os.path.join(root, "MME", "llava_mme.jsonl"), questions)

    sqa = os.path.join(root, "scienceqa")
    os.makedirs(os.path.join(sqa, "images", "test", "10"))
    os.makedirs(os.path.join(sqa, "images", "test", "12"))
    make_image(os.path.join(sqa, "images", "test", "10", "image.png"))
    make_image(os.path.join(sqa, "images", "test", "12", "image.png"), COLOURS[2])
    problems = {"10": {"question": "Which?", "choices": ["a", "b"], "answer": 0, "image": "image.png", "split": "test"},
                "11": {"question": "Which word?", "choices": ["x", "y", "z"], "answer": 2, "image": None,
                       "split": "test"},
                "12": {"question": "Colour?", "choices": ["r", "g", "b", "k"], "answer": 1, "image": "image.png",
                       "split": "test"}}
    write(os.path.join(sqa, "problems.json"), json.dumps(problems))
    write(os.path.join(sqa, "pid_splits.json"), json.dumps({"test": ["10", "11", "12"]}))
    convs = [{"id": pid, **({"image": f"{pid}/image.png"} if p["image"] else {}),
              "conversations": [{"from": "human", "value": p["question"] + "\nOptions: "
                                 + " ".join(f"({'ABCD'[i]}) {c}" for i, c in enumerate(p["choices"]))
                                 + ("\n<image>" if p["image"] else "")}]}
             for pid, p in problems.items()]
    write(os.path.join(sqa, "llava_test_CQM-A.json"), json.dumps(convs))
    return root


@pytest.mark.slow
def test_run_mme_and_scienceqa(tiny_llava, tmp_path):
    data = make_mme_and_sqa(str(tmp_path / "data"))
    out = str(tmp_path / "out")
    argv = ["run", "--model", tiny_llava, "--benchmarks", "mme,scienceqa", "--data-root", data, "--out", out,
            "--max-new-tokens", "2", "--device", "cpu", "--batch-size", "4", "--no-progress"]
    assert main(argv) == 0
    assert main(argv) == 0  # rerun: all reused, even with question ids shared by two questions
    results = json.loads(read(os.path.join(out, "results.json")))["benchmarks"]
    assert results["mme"]["generation"]["n_resumed"] == 8 and results["mme"]["generation"]["n_generated"] == 0
    mme = results["mme"]
    assert mme["metrics"]["n_scored"] == 8 and set(mme["metrics"]["subtasks"]) == {"existence", "count"}
    assert mme["rows"][0]["chance"] == 150.0 and mme["rows"][1]["chance"] == 0.0  # 2 perception, 0 cognition
    # two questions per image share their question_id (the image path), as in LLaVA's file:
    # both were answered, and the ground truth came from the release files
    answers = [json.loads(line) for line in read(os.path.join(out, "answers", "mme.jsonl")).splitlines()]
    assert len(answers) == 8 and len({a["question_id"] for a in answers}) == 4
    lines = read(os.path.join(out, "work", "mme", "mme_results", "count.txt")).splitlines()
    assert [line.split("\t")[2] for line in lines] == ["Yes", "No", "Yes", "No"]
    assert lines[0].startswith("0000.png\tIs there a count thing 0? Please answer yes or no.\tYes\t")
    sqa = results["scienceqa"]
    assert sqa["metrics"]["n_img"] == 2 and sqa["generation"]["n_resumed"] == 3
    assert sqa["rows"][0]["chance"] == pytest.approx(100 * (1 / 2 + 1 / 4) / 2)
    assert sqa["rows"][1]["chance"] == pytest.approx(100 * (1 / 2 + 1 / 3 + 1 / 4) / 3)
    md = read(os.path.join(out, "results.md"))
    assert "| MME-P | SQA-IMG |" in md and "| 1510.7 | 66.8 |" in md


@pytest.mark.slow
def test_run_submission_benchmarks_with_limit(tiny_llava, tmp_path):
    """VQAv2 / VizWiz test-dev and MM-Vet: answered and turned into submission files (no local
    score); --limit keeps the first questions and the report says it is a smoke run."""
    data = tmp_path / "data"
    specs = {"vqav2": ("llava_vqav2_mscoco_test-dev2015.jsonl", "test2015", [262144000 + k for k in range(3)]),
             "vizwiz": ("llava_test.jsonl", "test", [f"VizWiz_test_{k:08d}.jpg" for k in range(3)]),
             "mm-vet": ("llava-mm-vet.jsonl", "images", [f"v1_{k}" for k in range(3)])}
    for folder, (qfile, images, ids) in specs.items():
        os.makedirs(data / folder / images)
        for k, qid in enumerate(ids):
            make_image(data / folder / images / f"{k}.jpg", COLOURS[k])
        write_jsonl(data / folder / qfile, [{"question_id": qid, "image": f"{k}.jpg", "text": "What is it?"}
                                             for k, qid in enumerate(ids)])
    out = str(tmp_path / "out")
    assert main(["run", "--model", tiny_llava, "--benchmarks", "vqav2,vizwiz,mm-vet", "--data-root", str(data),
                 "--out", out, "--limit", "2", "--max-new-tokens", "2", "--min-new-tokens", "1", "--device", "cpu",
                 "--no-progress"]) == 0
    results = json.loads(read(os.path.join(out, "results.json")))["benchmarks"]
    for name in ("vqav2", "vizwiz", "mmvet"):
        assert results[name]["headline"] is None and results[name]["generation"]["n_generated"] == 2
    vqav2 = json.loads(read(os.path.join(out, "work", "vqav2", "vqav2_submission.json")))
    assert [r["question_id"] for r in vqav2] == [262144000, 262144001]
    mmvet = json.loads(read(os.path.join(out, "work", "mmvet", "mmvet_submission.json")))
    assert sorted(mmvet) == ["v1_0", "v1_1"]
    md = read(os.path.join(out, "results.md"))
    assert "Smoke run: only the first 2 questions" in md and "needs the MM-Vet GPT-4 grader" in md


def test_run_missing_image_fails_before_loading_the_model(tmp_path, capsys):
    data = make_data_root(str(tmp_path / "data"))
    os.remove(os.path.join(data, "pope", "val2014", "COCO_val2014_000000000003.jpg"))
    rc = main(["run", "--model", str(tmp_path / "no-model-here"), "--benchmarks", "pope", "--data-root", data,
               "--out", str(tmp_path / "out")])
    assert rc == 2 and "no-model-here: no config.json" in capsys.readouterr().err
    unloadable = tmp_path / "llava-without-weights"
    unloadable.mkdir()
    (unloadable / "config.json").write_text('{"model_type": "llava_llama"}')
    rc = main(["run", "--model", str(unloadable), "--benchmarks", "pope", "--data-root", data,
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "llava_pope_test.jsonl: line 3: image not found" in err
    assert not os.path.exists(tmp_path / "out" / "answers" / "pope.jsonl")


def test_run_keyword_api_with_files_elsewhere(tiny_llava, tmp_path):
    """`eval_mllm.run(...)` in this process on files that are not in the --data-root layout (named
    per benchmark with `files=`): the same answers and scores as the command on the layout."""
    import shutil

    import eval_mllm

    data = make_data_root(str(tmp_path / "data"))
    options = {"max_new_tokens": 3, "min_new_tokens": 1, "device": "cpu", "batch_size": 3, "progress": False}
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(os.path.join(data, "pope"), elsewhere)
    files = {"pope": {"question_file": str(elsewhere / "llava_pope_test.jsonl"),
                      "image_folder": str(elsewhere / "val2014"), "annotation_dir": str(elsewhere / "coco")}}
    ours = eval_mllm.run(model=tiny_llava, benchmarks=["pope"], out=str(tmp_path / "api"), files=files, **options)
    assert ours["benchmarks"]["pope"]["question_file"] == files["pope"]["question_file"]
    assert ours["benchmarks"]["pope"]["generation"]["n_generated"] == 6
    assert main(["run", "--model", tiny_llava, "--benchmarks", "pope", "--data-root", data, "--out",
                 str(tmp_path / "cli"), "--max-new-tokens", "3", "--min-new-tokens", "1", "--device", "cpu",
                 "--batch-size", "3", "--no-progress"]) == 0
    cli = json.loads(read(os.path.join(tmp_path, "cli", "results.json")))["benchmarks"]["pope"]
    assert [json.loads(line)["text"] for line in read(cli["answers_file"]).splitlines()] == \
        [json.loads(line)["text"] for line in read(ours["benchmarks"]["pope"]["answers_file"]).splitlines()]
    assert ours["benchmarks"]["pope"]["metrics"] == cli["metrics"]
    # and `eval_mllm.score` on the same files gives the same metrics
    assert eval_mllm.score("pope", result_file=ours["benchmarks"]["pope"]["answers_file"],
                           **{k: v for k, v in files["pope"].items() if k != "image_folder"}) == cli["metrics"]


def test_run_keyword_api_bad_files_fail_before_the_model(tmp_path):
    import eval_mllm
    from eval_mllm.errors import EvalInputError

    data = make_data_root(str(tmp_path / "data"))
    no_model = str(tmp_path / "no-model-here")
    with pytest.raises(EvalInputError, match="files: \\['gqa'\\] not among the benchmarks run"):
        eval_mllm.run(model=no_model, benchmarks="pope", out=str(tmp_path / "o"), data_root=data,
                      files={"gqa": {"question_file": "q"}})
    with pytest.raises(EvalInputError, match="pope: unknown file\\(s\\) \\['labels'\\]"):
        eval_mllm.run(model=no_model, benchmarks="pope", out=str(tmp_path / "o"),
                      data_root=data, files={"pope": {"labels": "x"}})

    with pytest.raises(EvalInputError, match="--benchmarks: none given; known: pope, mme"):
        eval_mllm.run(model=no_model, benchmarks=[], out=str(tmp_path / "o"), data_root=data)
    with pytest.raises(EvalInputError, match="--benchmarks: mmstar: scored only .*eval-mllm score"):
        eval_mllm.run(model=no_model, benchmarks="pope,mmstar", out=str(tmp_path / "o"), data_root=data)
    assert not os.path.exists(tmp_path / "o")  # nothing written
