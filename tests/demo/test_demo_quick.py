"""`clipmoe demo --quick` end to end, run once per session through the sub-command's own parser."""

import argparse
import json
import os
import time

import pytest

from clipmoe_encoder.demo import cli
from clipmoe_encoder.demo.run import MODELS

pytestmark = pytest.mark.slow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="clipmoe")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    code = args.func(args)
    return code, time.perf_counter() - start


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo") / "quick")
    code, seconds = run_cli(["demo", "--quick", "--out", out])
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    return out, code, seconds, results


def test_finishes_and_writes_every_output(quick_demo):
    out, code, seconds, _ = quick_demo
    assert code == 0
    print(f"quick demo: {seconds:.1f} s")
    for name in ("report.md", "results.json", "stages.json", "loss_curves.png", "routing_clip-moe.png", "routing_upcycling.png"):
        assert os.path.isfile(os.path.join(out, name)), name
    for name in ("loss_curves.png", "routing_clip-moe.png", "routing_upcycling.png"):
        with open(os.path.join(out, name), "rb") as f:
            assert f.read(8) == PNG_MAGIC


def test_all_four_models_measured(quick_demo):
    out, _, _, results = quick_demo
    assert list(results["models"]) == list(MODELS)
    keys = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "shape_top1", "shape_top5", "colour_top1", "colour_top5")
    for name, metrics in results["models"].items():
        for key in keys:
            assert 0.0 <= metrics[key] <= 100.0, (name, key)
        assert metrics["num_images"] == results["plan"]["world"]["n_test"]
    for key in keys:
        assert 0.0 < results["chance"][key] <= 100.0
    # the four are different checkpoints
    assert len(set(results["checkpoints"].values())) == 4
    with open(os.path.join(out, "report.md")) as f:
        report = f.read()
    for label in ("dense base", "direct fine-tune", "sparse upcycling", "CLIP-MoE (DMU)", "*chance*", "Time per stage"):
        assert label in report


def test_every_stage_timed(quick_demo):
    _, _, seconds, results = quick_demo
    stages = results["timings_s"]
    for name in ("world", "base-init", "base", "direct-ft", "upcycling", "dmu", "eval-base", "eval-clip-moe", "routing-clip-moe"):
        assert stages[name] > 0.0
    assert sum(stages.values()) <= seconds + 1.0


def test_rerun_resumes_without_training_again(quick_demo):
    out, _, first_seconds, results = quick_demo
    with open(os.path.join(out, "stages.json")) as f:
        before = json.load(f)
    code, seconds = run_cli(["demo", "--quick", "--out", out])
    assert code == 0
    with open(os.path.join(out, "stages.json")) as f:
        assert json.load(f) == before  # no stage ran again
    with open(os.path.join(out, "results.json")) as f:
        assert json.load(f)["models"] == results["models"]
    assert seconds < first_seconds / 2
