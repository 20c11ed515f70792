"""`clipmoe-demo chain --out DIR --quick` end to end, once: DMU demo, both LLaVA runs through
the DeepSpeed scripts, the three benchmarks, the report. Its times go into the report, never into
an assertion (they depend on the machine and its load)."""

import ast
import json
import math
import os
import re

import pytest

from clipmoe_demo import cli
from clipmoe_demo.chain.progress import parse_trainer_output
from clipmoe_demo.chain.run import run_chain
from clipmoe_encoder.errors import CLIPMoEError

from .. import probe_script

pytestmark = pytest.mark.slow

RUN_ROWS = ("LLaVA + dense CLIP tower", "LLaVA + CLIP-MoE tower")


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("chain") / "quick")
    code = cli.main(["chain", "--out", out, "--quick"])
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    with open(os.path.join(out, "report.md")) as f:
        report = f.read()
    return out, code, results, report


def test_finishes_and_every_phase_has_a_row_in_the_time_table(chain):
    """Which phases the time table lists (the values are the run's own, rendered from results.json:
    test_the_report_is_rendered_from_the_files_the_run_wrote)."""
    _, code, results, report = chain
    assert code == 0
    assert len(results["timings"]) == 5  # the demo (its world stage among its own), data, towers, LM, LLaVA runs
    table = report[report.index("## 4. Time per stage"):]
    assert all(f"| {name} |" in table for name in results["timings"])
    assert "| demo: world |" in table and "**total (wall clock of this command)**" in table


def test_report_has_both_llava_runs_with_chance_levels(chain):
    out, _, results, report = chain
    plan = results["plan"]
    # the settings line names the trainer flags and the LLM's sizes (rendered, not left as a template)
    assert "`scripts/llava/finetune.sh --gradient_checkpointing False --deepspeed zero2.json`" in report
    assert f"LLM: Llama, hidden {plan['llm_hidden']}, {plan['llm_layers']} layers," in report
    table = [line for line in report.splitlines() if line.startswith("| ")]
    header = next(line for line in table if line.startswith("| benchmark"))
    assert "| chance |" in header and all(label in header for label in RUN_ROWS)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in table}
    assert rows["POPE accuracy (mean of splits)"][0] == "50.0"
    assert rows["MMBench-style accuracy (single pass)"][0] == "25.0"
    assert re.fullmatch(r"\d+\.\d uniform / \d+\.\d majority", rows["GQA-style accuracy"][0])
    for label in ("POPE accuracy (mean of splits)", "GQA-style accuracy", "MMBench-style accuracy (single pass)"):
        assert all(re.fullmatch(r"\d+\.\d", v) for v in rows[label][1:]), rows[label]  # both runs scored
    assert "dense base" in report and "CLIP-MoE (DMU)" in report  # the demo's zero-shot table
    for name in ("llava_loss_curves.png", "demo/routing_clip-moe.png"):
        assert os.path.isfile(os.path.join(out, name)) and f"]({name})" in report


def test_every_question_answered_and_scored(chain):
    _, _, results, _ = chain
    for run in ("dense", "clip-moe"):
        scores = results["scores"][run]
        for name in ("pope", "gqa", "mmbench"):
            assert scores[name]["n_missing"] == 0 and scores[name]["n_scored"] == results["benchmarks"][name]["n"]


def test_both_runs_trained_with_finite_losses_and_the_same_budget(chain):
    _, _, results, _ = chain
    runs = results["runs"]
    assert runs["dense"]["steps"] == runs["clip-moe"]["steps"]
    assert runs["dense"]["tower"] != runs["clip-moe"]["tower"] and runs["clip-moe"]["tower"].startswith("clipmoe:")
    for run in ("dense", "clip-moe"):
        for stage in ("stage1", "stage2"):
            losses = [r["loss"] for r in results["curves"][run][stage]]
            assert len(losses) == runs[run]["steps"][stage]
            assert all(math.isfinite(x) and x > 0 for x in losses)
        stage2 = [r["loss"] for r in results["curves"][run]["stage2"]]
        assert sum(stage2[-10:]) / 10 < sum(stage2[:10]) / 10  # the LLM learned something
        with open(os.path.join(os.path.dirname(runs[run]["stage2"]), "stage2.log")) as f:
            log = f.read()
        assert "tokenization mismatch" not in log
        # the script's own --deepspeed zero3.json and --gradient_checkpointing True, then the chain's
        # one-rank flags, which the trainer's argument parser takes (the last value of a flag wins)
        spawned = ast.literal_eval(re.search(r"spawned with command: (\[.*\])", log).group(1))
        last_value = {flag: spawned[len(spawned) - spawned[::-1].index(flag)] for flag in ("--deepspeed", "--gradient_checkpointing")}
        assert "zero3.json" in " ".join(spawned)
        assert os.path.basename(last_value["--deepspeed"]) == "zero2.json" and last_value["--gradient_checkpointing"] == "False"
        # what the console's progress line reads from the stage log: the last step and loss
        state = parse_trainer_output(log)
        assert state["step"] == state["total"] == runs[run]["steps"]["stage2"]
        assert state["loss"] == pytest.approx(stage2[-1], rel=1e-3)


def test_rerun_reuses_finished_stages_and_gives_the_same_scores(chain):
    out, _, results, _ = chain
    again = run_chain(out, quick=True, log=lambda *a: None)
    for run in again["runs"].values():
        assert run["reused"] == {"stage1": True, "stage2": True}
    assert again["scores"] == results["scores"]
    with open(os.path.join(out, "report.md")) as f:
        assert "reused: finished by an earlier run" in f.read()


def test_bootstrap_intervals_hold_the_scores_and_are_in_the_report(chain):
    from clipmoe_demo.chain.report import interval_table

    _, _, results, report = chain
    for name, key in (("pope", "accuracy_mean"), ("gqa", "accuracy"), ("mmbench", "accuracy")):
        interval = results["intervals"][name]
        for run in ("dense", "clip-moe"):
            value = interval["runs"][run]
            assert value["value"] == pytest.approx(results["scores"][run][name][key], abs=1e-9)
            assert value["low"] <= value["value"] <= value["high"]
        assert interval["difference"]["value"] == pytest.approx(
            interval["runs"]["dense"]["value"] - interval["runs"]["clip-moe"]["value"], abs=1e-9)
    assert interval_table(results["intervals"]) in report  # rendered from what results.json holds


def test_the_report_is_rendered_from_the_files_the_run_wrote(chain):
    from clipmoe_demo.chain.report import render_saved

    out = chain[0]
    with open(os.path.join(out, "report.md")) as f:  # as the last run left them (the rerun test rewrites both)
        report = f.read()
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    assert render_saved(out) == report  # every figure in it is in results.json (or a figure file beside it)
    for figure in re.findall(r"\]\(([^)]+\.png)\)", report):
        assert os.path.isfile(os.path.join(out, figure)), figure
    zero_shot = results["zero_shot"]["clip-moe"]["i2t_r1"]
    assert f"{zero_shot:.1f}" in report


def test_a_llava_run_reruns_with_other_settings_on_the_chain_outputs(chain, tmp_path, capsys):
    """scripts/demo_probes/llava_variant.py (the stage-2 settings the README compares): one run on
    the chain's world, LM, tower and benchmarks with plan fields changed, scored on every benchmark."""
    out, _, results, _ = chain
    probe_script("llava_variant").main(["--chain", out, "--out", str(tmp_path / "variant"), "--tower", "clip-moe",
                                        "--set", "n_train=16", "--set", "stage1_epochs=0.5", "--set", "stage2_epochs=1",
                                        "--set", "stage2_lr=1e-3"])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["steps"] == {"stage1": 1, "stage2": 2}  # 16 records at batch 8, half an epoch in stage 1
    assert line["set"] == ["n_train=16", "stage1_epochs=0.5", "stage2_epochs=1", "stage2_lr=1e-3"]
    for name in ("pope_accuracy_mean", "gqa_accuracy", "mmbench_accuracy"):
        assert 0 <= line[name] <= 100
    with open(tmp_path / "variant" / "clip-moe" / "llava-stage2" / "chain_stage_done.json") as f:
        assert json.load(f)["settings"]["args"][:2] == ["--learning_rate", "0.001"]
    with pytest.raises(SystemExit, match="no plan field 'stage3_lr'"):
        probe_script("llava_variant").main(["--chain", out, "--out", str(tmp_path / "bad"), "--set", "stage3_lr=1"])
    with pytest.raises(SystemExit, match="n_train takes an integer"):
        probe_script("llava_variant").main(["--chain", out, "--out", str(tmp_path / "bad"), "--set", "n_train=1.5"])
    assert not os.path.exists(tmp_path / "bad")  # refused before anything was written


def test_stage_two_is_timed_with_other_trainer_flags(chain, tmp_path, capsys):
    """scripts/demo_probes/llava_stage_speed.py (how the chain's one-rank flags were chosen): a few
    stage-2 steps of a chain's run, here with finetune.sh as published, timed by the trainer."""
    from llava_integration import launch_dir

    out = chain[0]
    published = ["--deepspeed", os.path.join(launch_dir(), "zero3.json"), "--gradient_checkpointing", "True"]
    probe_script("llava_stage_speed").main(["--chain", out, "--out", str(tmp_path / "speed"), "--steps", "2", *published])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["flags"] == published and line["steps"] == 2 and line["tower"] == "dense"
    assert math.isfinite(line["last_loss"]) and line["last_loss"] > 0
    with open(tmp_path / "speed" / "stage2.log") as f:
        assert "'train_runtime'" in f.read()


def test_a_folder_of_another_mode_is_refused_before_anything_is_written(chain):
    """The chain writes the world before the demo runs (its LM needs only the world's text): a
    full-mode run into the quick run's folder is refused first, and the quick world is untouched."""
    out, _, _, _ = chain
    world_file = os.path.join(out, "demo", "world", "world.json")
    with open(world_file) as f:
        before = f.read()
    with pytest.raises(CLIPMoEError, match="holds a demo run with other settings"):
        run_chain(out, quick=False, log=lambda *a: None)
    with open(world_file) as f:
        assert f.read() == before


def test_the_chain_lm_is_retrained_with_another_seed_or_settings(chain, tmp_path, capsys):
    """scripts/demo_probes/lm_variant.py (the LM-seed spread behind the README's LLaVA scores): seed 0
    gives the chain's own LM bit for bit, evaluated on the way or not; seed 1, another learning
    rate and answer tokens weighted 10 times give others; each is scored on the text probe."""
    from safetensors.torch import load_file

    out = chain[0]
    steps = chain[2]["plan"]["lm_steps"]
    runs = {"seed0": ["--seed", "0", "--eval-every", str(steps // 2)], "seed1": ["--seed", "1"], "lr": ["--set", "lm_lr=1e-3"],
            "answers": ["--answer-weight", "10"]}
    weights = {}
    for name, flags in runs.items():
        probe_script("lm_variant").main(["--chain", out, "--out", str(tmp_path / name), *flags])
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
        assert [line.get("step") for line in lines] == ([steps // 2, None] if name == "seed0" else [None])
        assert lines[-1]["seed"] == (1 if name == "seed1" else 0) and math.isfinite(lines[-1]["last_loss"]["loss"])
        assert lines[-1]["answer_weight"] == (10 if name == "answers" else 1)
        probe = lines[-1]["text_probe"]
        assert 0 <= probe["balanced_accuracy"] <= 100 and 0 <= probe["multiple_choice_accuracy"] <= 100
        weights[name] = load_file(os.path.join(lines[-1]["llm"], "model.safetensors"))
    chain_lm = load_file(os.path.join(out, "llava", "llm", "model.safetensors"))
    assert all(weights["seed0"][k].equal(chain_lm[k]) for k in chain_lm)
    assert not all(weights["seed1"][k].equal(chain_lm[k]) for k in chain_lm)
    assert not all(weights["lr"][k].equal(chain_lm[k]) for k in chain_lm)
    assert not all(weights["answers"][k].equal(chain_lm[k]) for k in chain_lm)
