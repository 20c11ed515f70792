"""The score CLI as a whole: error handling and parser wiring."""

import argparse
import json

from eval_mllm import score_cli
from eval_mllm.benchmarks import REGISTRY


def test_input_error_is_one_line_and_exit_2(cli, tmp_path):
    rc, out, err = cli("gqa", "--question-file", tmp_path / "q.jsonl",
                       "--result-file", tmp_path / "a.jsonl",
                       "--annotation-file", tmp_path / "missing.json", "--json")
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and "missing.json" in err
    assert "Traceback" not in err


def test_bad_arguments_exit_2(cli):
    rc, _, err = cli("pope", "--annotation-dir")
    assert rc == 2 and "usage" in err


def test_build_parser_adds_score_subcommand(tmp_path, h, capsys):
    top = argparse.ArgumentParser(prog="eval_mllm")
    score_cli.build_parser(top.add_subparsers(dest="command"))
    h.write_jsonl(tmp_path / "q.jsonl", [{"question_id": "1"}])
    h.write_json(tmp_path / "ann.json", {"1": {"answer": "yes"}})
    h.answers_file(tmp_path / "a.jsonl", [("1", "Yes.")])
    args = top.parse_args(["score", "gqa", "--question-file", str(tmp_path / "q.jsonl"),
                           "--result-file", str(tmp_path / "a.jsonl"),
                           "--annotation-file", str(tmp_path / "ann.json"), "--json"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["accuracy"] == 100.0


def test_registry_modules_have_the_interface():
    for name, bench in REGISTRY.items():
        for attr in ("score", "add_arguments", "from_args"):
            assert callable(getattr(bench.scorer, attr)), (name, attr)
