"""`clipmoe-demo encoder --quick` end to end, run once per session through the command's own parser.
Its times are measured and written into the report, never asserted here (they depend on the machine)."""

import ast
import dataclasses
import json
import os

import pytest

from clipmoe_demo import cli
from clipmoe_demo import world as W
from clipmoe_demo.encoder.run import MODELS

from .. import probe_script

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
    pngs = ("loss_curves.png", "routing_clip-moe.png", "routing_upcycling.png", "cluster_purity.png", "routing_by_attribute.png")
    for name in ("report.md", "results.json", "stages.json") + pngs:
        assert os.path.isfile(os.path.join(out, name)), name
    for name in pngs:
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
    # the five are different checkpoints
    assert len(set(results["checkpoints"].values())) == len(MODELS)
    with open(os.path.join(out, "report.md")) as f:
        report = f.read()
    for label in ("dense base", "direct fine-tune", "sparse upcycling", "CLIP-MoE (DMU)", "*chance*", "Time per stage",
                  "Quality against cost", "DMU's mechanism", "expert 3 alone", "last half of the blocks"):
        assert label in report


def test_mechanism_and_cost(quick_demo):
    _, _, results = quick_demo
    mech = results["mechanism"]
    # DMU's router stage trains only the routers: expert 0 is the base's FFN, so alone it is the base
    assert mech["expert_results"]["expert0"] == results["results_by_seed"][mech["seed"]]["base"]
    assert len(mech["cluster_purity"]) == 3  # one clustering per MCL stage (4 experts)
    k = results["dmu_settings"]["clusters_per_modality"]
    assert [s["clusters"] <= (k * k) ** (s["stage"] + 1) for s in mech["cluster_purity"]] == [True] * 3
    cost = results["cost"]
    flops = {name: c["flops"]["total"] for name, c in cost.items()}
    # dense models cost the same; the full CLIP-MoE the most; experts in half the blocks in between
    assert flops["base"] == flops["direct-ft"] < flops["clip-moe-last-half"] < flops["clip-moe"] == flops["upcycling"]
    assert cost["base"]["relative"] == 1.0
    from clipmoe_encoder.dmu.models import load_model

    layers = results["plan"]["base"]["num_layers"]
    half = load_model(results["checkpoints"]["clip-moe-last-half"]).config
    assert half.vision_config.moe_layer_indices == list(range(layers - max(1, layers // 2), layers))
    assert half.text_config.moe_layer_indices == half.vision_config.moe_layer_indices


def test_every_stage_recorded(quick_demo):
    """Each seed's jobs and the first seed's analyses are recorded in stages.json (with the time they
    took, which the report shows and no test judges)."""
    _, _, results = quick_demo
    stages = results["timings_s"]
    seeds = results["plan"]["seeds"]
    assert len(seeds) == 3
    expected = {"world"}
    for seed in seeds:
        expected |= {f"seed{seed}/{name}" for name in ("base-init", "base", "direct-ft", "upcycling", "dmu", "clip-moe-last-half",
                                                        *(f"eval-{m}" for m in MODELS))}
    expected |= {f"seed{seeds[0]}/{name}" for name in ("routing-clip-moe", "cluster-purity", "routing-by-attribute", "cost", "eval-expert3")}
    assert expected <= set(stages)


def test_seeds_aggregated(quick_demo):
    """The headline table is the mean over the seeds; every comparison is stated with its verdict."""
    import statistics

    _, _, results = quick_demo
    by_seed = results["results_by_seed"]
    assert list(by_seed) == [f"seed{s}" for s in results["plan"]["seeds"]]
    for model in MODELS:
        values = [by_seed[s][model]["shape_top1"] for s in by_seed]
        assert results["models"][model]["shape_top1"] == pytest.approx(statistics.fmean(values))
        assert results["results_std"][model]["shape_top1"] == pytest.approx(statistics.stdev(values))
    # the seeds trained different models
    assert len({json.dumps(by_seed[s]["clip-moe"], sort_keys=True) for s in by_seed}) == 3
    assert {(c["b"], c["metric"]) for c in results["comparisons"]} >= {("base", "shape_top1"), ("upcycling", "i2t_r1")}


def test_rerun_resumes_without_training_again(quick_demo):
    out, _, results = quick_demo
    with open(os.path.join(out, "stages.json")) as f:
        before = json.load(f)
    assert cli.main(["encoder", "--quick", "--out", out]) == 0
    with open(os.path.join(out, "stages.json")) as f:
        assert json.load(f) == before  # no stage ran again (each records its own time when it runs)
    with open(os.path.join(out, "results.json")) as f:
        assert json.load(f)["models"] == results["models"]


def test_the_diagnostic_probes_run_on_a_demo_world(quick_demo, tmp_path, capsys):
    """scripts/demo_probes (the README's diagnosis of issue 14), each at a few steps: they run on a
    demo's own outputs and print the figures they exist for."""
    out, _, results = quick_demo
    world, base = os.path.join(out, "world"), results["checkpoints_by_seed"]["seed0"]["base"]
    lm_dir = str(tmp_path / "lm")
    probe_script("lm_existence_probe").main(["--out", lm_dir, "--steps", "2", "--eval-every", "2", "--hidden", "32", "--batch", "2"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("2 loss ") and "'balanced_accuracy'" in line and "'multiple_choice_accuracy'" in line
    probe_script("lm_existence_probe").main(["--evaluate", lm_dir])  # the saved model, as a chain's DIR/llava/llm
    figures = ast.literal_eval(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(figures) == {"balanced_accuracy", "yes_ratio", "right_when_Yes", "right_when_No", "multiple_choice_accuracy",
                            "multiple_choice_by_type", "short_answer_accuracy", "short_answer_by_type"}
    assert set(figures["short_answer_by_type"]) == {"colour", "count", "position", "shape"}
    assert 0 <= figures["short_answer_accuracy"] <= 100
    for start in ([], ["--llm", lm_dir]):  # a random Llama, or a trained one (its hidden size)
        probe_script("llava_feature_probe").main(["--tower", base, "--world", world, "--tokenizer", lm_dir, "--k", "3", *start,
                                             "--steps", "2", "--eval-every", "2", "--hidden", "32", "--batch", "2", "--n-train", "8"])
        line = capsys.readouterr().out.strip().splitlines()[-1]
        assert line.startswith("2 loss ") and "'pope_mean'" in line and "'adversarial'" in line
    probe_script("base_variant").main(["--world", world, "--out", str(tmp_path / "base"), "--epochs", "1", "--batch", "32",
                                  "--patch", "4", "--hidden", "32", "--layers", "1", "--batches-within", "colour"])
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for attribute in ("shape", "colour", "count", "size"):
        assert 0 <= figures[f"{attribute}_top1"] <= 100 and 0 <= figures[f"{attribute}_linear_probe"] <= 100
    probe_script("base_variant").main(["--world", world, "--out", str(tmp_path / "big"), "--epochs", "1", "--batch", "32",
                                       "--patch", "4", "--hidden", "32", "--layers", "1", "--image-size", "40", "--shape-twins"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["settings"]["image_size"] == 40
    assert len(W.read_scenes(str(tmp_path / "big" / "world"), "train")) == 2 * W.read_settings(world).n_train  # and the twins
    resized = W.read_settings(str(tmp_path / "big" / "world"))
    assert resized == dataclasses.replace(W.read_settings(world), image_size=40) != W.read_settings(world)
    probe_script("shape_supervised").main(["--world", world, "--steps", "3", "--eval-every", "3", "--batch", "8",
                                           "--warmup", "1", "--patch", "4", "--hidden", "32", "--layers", "1"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("3 loss ") and 0 <= float(line.split("shape_top1 ")[1].split()[0]) <= 100
