"""`clipmoe-demo encoder --quick` end to end, run once per session through the command's own parser.
Its times are measured and written into the report, never asserted here (they depend on the machine)."""

import json
import os

import pytest

from clipmoe_demo import cli
from clipmoe_demo.encoder.run import MODELS

pytestmark = pytest.mark.slow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo") / "quick")
    code = cli.main(["encoder", "--quick", "--out", out])
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    return out, code, results


def test_finishes_and_writes_every_output(quick_demo):
    out, code, _ = quick_demo
    assert code == 0
    for name in ("report.md", "results.json", "stages.json", "loss_curves.png", "routing_clip-moe.png", "routing_upcycling.png"):
        assert os.path.isfile(os.path.join(out, name)), name
    for name in ("loss_curves.png", "routing_clip-moe.png", "routing_upcycling.png"):
        with open(os.path.join(out, name), "rb") as f:
            assert f.read(8) == PNG_MAGIC


def test_all_four_models_measured(quick_demo):
    out, _, results = quick_demo
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
    _, _, results = quick_demo
    stages = results["timings_s"]
    for name in ("world", "base-init", "base", "direct-ft", "upcycling", "dmu", "eval-base", "eval-clip-moe", "routing-clip-moe"):
        assert stages[name] > 0.0


def test_rerun_resumes_without_training_again(quick_demo):
    out, _, results = quick_demo
    with open(os.path.join(out, "stages.json")) as f:
        before = json.load(f)
    assert cli.main(["encoder", "--quick", "--out", out]) == 0
    with open(os.path.join(out, "stages.json")) as f:
        assert json.load(f) == before  # no stage ran again (each records its own time when it runs)
    with open(os.path.join(out, "results.json")) as f:
        assert json.load(f)["models"] == results["models"]
