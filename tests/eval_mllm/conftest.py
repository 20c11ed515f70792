"""Shared helpers for the scorer tests: tiny fixtures in the official formats."""

import json
import pathlib
import random
import sys
from types import SimpleNamespace

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def write_json(path, obj):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def write_jsonl(path, records, tail=""):
    """One JSON object a line; ``tail`` is appended raw (e.g. a cut-off line)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records) + tail
    path.write_text(text, encoding="utf-8")
    return path


def answer(qid, text, **extra):
    """An answer line as LLaVA's model_vqa_loader.py writes it."""
    return {"question_id": qid, "prompt": extra.pop("prompt", "q"), "text": text,
            "answer_id": f"a{qid}", "model_id": "clip-moe", "metadata": {}, **extra}


def answers_file(path, pairs, tail=""):
    """Write ``[(qid, text), ...]`` as an answers JSONL."""
    return write_jsonl(path, [answer(q, t) for q, t in pairs], tail)


def shuffled(items, seed=0):
    items = list(items)
    random.Random(seed).shuffle(items)
    return items


# A line cut mid-write, as a killed generator leaves it.
TRUNCATED_TAIL = '{"question_id": 7, "prompt": "q", "te'


@pytest.fixture
def h():
    return SimpleNamespace(write_json=write_json, write_jsonl=write_jsonl, answer=answer,
                           answers_file=answers_file, shuffled=shuffled,
                           TRUNCATED_TAIL=TRUNCATED_TAIL)


@pytest.fixture
def cli(capsys):
    """Run ``eval_mllm.score_cli.main`` and return (exit code, stdout, stderr)."""
    from eval_mllm.score_cli import main

    def run(*argv):
        rc = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return rc, captured.out, captured.err

    return run


@pytest.fixture
def cli_json(cli):
    """Run the CLI with --json and return the metrics of its last stdout line."""
    def run(*argv):
        rc, out, err = cli(*argv, "--json")
        assert rc == 0, err
        return json.loads(out.strip().splitlines()[-1])
    return run
