"""`clipmoe dmu run` / `baseline` end to end on a tiny base and 12 images."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from clipmoe_encoder import CLIPMoEError
from clipmoe_encoder.cli import main
from clipmoe_encoder.dmu.features import load_features
from clipmoe_encoder.dmu.models import load_model
from clipmoe_encoder.dmu.pipeline import routing_statistics

from .helpers import make_base, make_dataset

FLAGS = ["--batch-size", "4", "--warmup-steps", "1", "--small-clusters", "merge", "--lr-mcl", "1e-3", "--save-every", "2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    base = make_base(str(root / "base"))
    data = make_dataset(str(root / "data"), n=12)
    out = str(root / "table" / "dmu")  # the layout `clipmoe dmu table` uses, so that test reuses these runs
    assert main(["dmu", "run", "--base", base, "--data", data, "--out", out, *FLAGS]) == 0
    return base, data, out, root


def _json(path):
    with open(path) as f:
        return json.load(f)


def _text(path):
    with open(path) as f:
        return f.read()


def _rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_run_writes_final_model_report_and_logs(run):
    base, _data, out, _ = run
    final = os.path.join(out, "final")
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer_config.json"):
        assert os.path.isfile(os.path.join(final, name)), name
    moe = load_model(final)
    assert moe.config.model_type == "clipmoe" and moe.config.vision_config.num_experts == 4
    sd = moe.state_dict()
    sources = [load_model(base).state_dict()] + [load_model(os.path.join(out, f"mcl{s}", "model")).state_dict() for s in (1, 2, 3)]
    for tower in ("vision", "text"):
        for layer in range(2):
            p = f"{tower}_model.encoder.layers.{layer}.mlp."
            for j, src in enumerate(sources):  # expert 0 = base FFN, expert s = MCL stage s FFN
                assert torch.equal(sd[p + "experts.fc1_weight"][j], src[p + "fc1.weight"])
                assert torch.equal(sd[p + "experts.fc2_weight"][j], src[p + "fc2.weight"])
    # the MCL stages really changed the FFNs and nothing else
    assert not torch.equal(sources[1]["vision_model.encoder.layers.0.mlp.fc1.weight"], sources[0]["vision_model.encoder.layers.0.mlp.fc1.weight"])
    assert torch.equal(sources[1]["vision_model.encoder.layers.0.self_attn.q_proj.weight"], sources[0]["vision_model.encoder.layers.0.self_attn.q_proj.weight"])

    for s in range(3):  # each stage's features: fp16 .npy files the clustering memory-maps
        feats = load_features(os.path.join(out, "features", f"stage{s}"))
        assert feats["image"].dtype == feats["text"].dtype == np.float16 and feats["image"].shape[0] == 12
        assert np.allclose(np.linalg.norm(feats["image"].astype(np.float32), axis=1), 1, atol=2e-3)
    report = _json(os.path.join(out, "report.json"))
    assert set(report["stages"]) == {"mcl1", "mcl2", "mcl3", "router"}
    counts = [report["clusters"][f"stage{s}"]["nonempty_clusters"] for s in range(3)]
    assert 1 < counts[0] <= 9 and counts[0] <= counts[1] <= counts[2] <= 12  # labels only refine across stages
    assert report["stages"]["mcl1"]["sampler"]["clusters"] == counts[0]
    assert report["stages"]["router"]["trainable_parameters"] == 4 * 32 * 4
    assert len(report["routing"]["vision"]["entropy"]) == 2
    assert "## Routing" in _text(os.path.join(out, "report.md"))
    for stage in ("mcl1", "mcl2", "mcl3", "router"):
        rows = _rows(os.path.join(out, stage, "log.jsonl"))
        assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
        assert {"loss", "lr", "samples_per_s"} <= set(rows[0])
    router_row = _rows(os.path.join(out, "router", "log.jsonl"))[0]
    assert "load_balancing_loss" in router_row and "lr_router" in router_row
    layer_load = router_row["per_layer"]["vision"]["load"]  # per MoE layer, share of top-k picks per expert
    assert len(layer_load) == 2 and all(sum(x) == pytest.approx(1.0, abs=1e-3) for x in layer_load)


@pytest.mark.slow
def test_rerun_resumes_nothing_to_do_and_refuses_changed_settings(run, capsys):
    base, data, out, _ = run
    before = _text(os.path.join(out, "router", "log.jsonl"))
    weights = load_file(os.path.join(out, "final", "model.safetensors"))
    assert main(["dmu", "run", "--base", base, "--data", data, "--out", out, *FLAGS]) == 0
    assert _text(os.path.join(out, "router", "log.jsonl")) == before
    again = load_file(os.path.join(out, "final", "model.safetensors"))
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    assert main(["dmu", "run", "--base", base, "--data", data, "--out", out, *FLAGS, "--lr-router", "1e-2"]) == 2
    assert "field 'lr_router'" in capsys.readouterr().err
    # keeping the samples in memory changes no result: a rerun may turn it on
    assert main(["dmu", "run", "--base", base, "--data", data, "--out", out, *FLAGS, "--cache-samples"]) == 0
    assert _text(os.path.join(out, "router", "log.jsonl")) == before


@pytest.mark.slow
def test_resume_compares_content_not_names(run, tmp_path, capsys):
    """The run folder resumes on the same base and data wherever they now live, and refuses (changing
    nothing) when their content changed: an in-place caption edit keeps the path and the count."""
    from tests.one_line_errors import hash_tree

    base, data, out, _ = run
    shutil.copytree(os.path.dirname(data), tmp_path / "data")
    shutil.copytree(base, tmp_path / "base")
    shutil.copytree(out, tmp_path / "run")
    moved = [str(tmp_path / "base"), str(tmp_path / "data" / os.path.basename(data)), str(tmp_path / "run")]

    def rerun(*extra):
        return main(["dmu", "run", "--base", moved[0], "--data", moved[1], "--out", moved[2], *FLAGS, *extra])

    log = _text(tmp_path / "run" / "router" / "log.jsonl")
    os.utime(moved[1], (1, 1))  # touched: same content
    assert rerun() == 0
    assert _text(tmp_path / "run" / "router" / "log.jsonl") == log  # nothing retrained

    records = _json(moved[1])
    records[3]["conversations"][1]["value"] = "a purple circle"
    with open(moved[1], "w") as f:
        json.dump(records, f)
    before = hash_tree(str(tmp_path / "run"))
    capsys.readouterr()
    assert rerun() == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "settings.json" in err and "training data changed" in err and "--restart" in err
    assert hash_tree(str(tmp_path / "run")) == before

    shutil.copy(data, moved[1])  # the data as it was, but another base's weights in the same place
    make_base(str(tmp_path / "other_base"), seed=5)
    shutil.copy(tmp_path / "other_base" / "model.safetensors", tmp_path / "base" / "model.safetensors")
    assert rerun() == 2
    err = capsys.readouterr().err
    assert "base model's file 'model.safetensors' changed" in err and "--restart" in err
    assert hash_tree(str(tmp_path / "run")) == before


@pytest.mark.slow
def test_routing_statistics_fractions(run):
    base, data, out, _ = run
    stats = routing_statistics(os.path.join(out, "final"), data, max_samples=6)
    for tower in ("vision", "text"):
        t = stats[tower]
        assert t["layers"] == [0, 1]
        for first, second, load in zip(t["first_choice"], t["second_choice"], t["load"]):
            assert sum(first) == pytest.approx(1.0) and sum(second) == pytest.approx(1.0) and sum(load) == pytest.approx(1.0)
        assert all(0 < h <= t["max_entropy"] + 1e-6 for h in t["entropy"])
    with pytest.raises(CLIPMoEError, match="two-tower CLIP-MoE"):
        routing_statistics(base, data)


@pytest.mark.slow
def test_baselines_same_budget(run):
    base, data, out, root = run
    dmu = _json(os.path.join(out, "report.json"))
    bl = str(root / "table" / "baselines")
    for kind in ("upcycling", "direct-ft"):
        assert main(["dmu", "baseline", "--kind", kind, "--base", base, "--data", data, "--out", bl, *FLAGS]) == 0
        report = _json(os.path.join(bl, kind, "report.json"))
        stage = report["stages"][kind]
        assert stage["epochs"] == 4 and stage["steps"] == 4 * (12 // 4)  # (N-1) MCL epochs + 1 router epoch
        assert stage["steps"] >= sum(dmu["stages"][s]["steps"] for s in dmu["stages"])
    up = load_model(os.path.join(bl, "upcycling", "model"))
    assert up.config.model_type == "clipmoe"
    direct = load_model(os.path.join(bl, "direct-ft", "model"))
    b = load_model(base)
    # direct FT trains all parameters (attention too); the logit scale stays frozen at 100
    assert not torch.equal(direct.vision_model.encoder.layers[0].self_attn.q_proj.weight, b.vision_model.encoder.layers[0].self_attn.q_proj.weight)
    assert direct.logit_scale.exp().item() == pytest.approx(100.0, rel=1e-5)


@pytest.mark.slow
def test_table_reuses_the_runs_and_scores_every_model(run, capsys):
    base, data, _out, root = run
    held_out = make_dataset(str(root / "heldout"), n=6, seed=100)
    table_dir = str(root / "table")
    assert main(["dmu", "table", "--base", base, "--data", data, "--out", table_dir, "--eval-data", held_out, *FLAGS]) == 0
    table = _json(os.path.join(table_dir, "table.json"))
    assert list(table["retrieval"]) == ["base (dense)", "direct fine-tune", "sparse upcycling", "CLIP-MoE (DMU)"]
    for scores in table["retrieval"].values():
        assert 0 <= scores["i2t_r1"] <= scores["i2t_r5"] <= scores["i2t_r10"] == 100.0  # 6 candidates: R@10 = 100
    assert "| CLIP-MoE (DMU) |" in capsys.readouterr().out


def test_table_scores_ties_as_losses_through_zeroshot(tmp_path, monkeypatch):
    """A collapsed model (every embedding equal) must not top the table: the zero-shot ranking
    gives a tie to the lower index, so only pair 0 is found at rank 1 (R@1 = 1/6)."""
    from clipmoe_encoder.dmu import table as table_mod
    from clipmoe_encoder.dmu.models import load_preprocessors, save_model_dir

    base = make_base(str(tmp_path / "base"))
    model = load_model(base)
    with torch.no_grad():
        model.visual_projection.weight.zero_()
        model.text_projection.weight.zero_()
    collapsed = save_model_dir(model, *load_preprocessors(base), str(tmp_path / "collapsed"))
    held_out = make_dataset(str(tmp_path / "heldout"), n=6, seed=100)
    monkeypatch.setattr(table_mod, "run_baseline", lambda *a, **k: base)
    monkeypatch.setattr(table_mod, "run_dmu", lambda *a, **k: collapsed)
    reads, load_records = [], table_mod.load_records
    monkeypatch.setattr(table_mod, "load_records", lambda *a, **k: reads.append(a) or load_records(*a, **k))
    out = str(tmp_path / "table")
    os.makedirs(out)
    result = table_mod.comparison_table(base, None, out, None, held_out)
    assert len(reads) == 1  # the held-out pairs are read once for all four models
    dmu = result["rows"]["CLIP-MoE (DMU)"]
    assert dmu["i2t_r1"] == pytest.approx(100 / 6) and dmu["t2i_r1"] == pytest.approx(100 / 6)
    assert dmu["i2t_r5"] == pytest.approx(500 / 6) and dmu["i2t_r10"] == 100.0
    assert result["rows"]["base (dense)"] == result["rows"]["direct fine-tune"]  # same model, same scores
    assert "| model | i2t_r1 | i2t_r5 | i2t_r10 | t2i_r1 | t2i_r5 | t2i_r10 |" in result["markdown"]
    assert "| CLIP-MoE (DMU) | 16.7 | 83.3 | 100.0 | 16.7 | 83.3 | 100.0 |" in result["markdown"]
    assert _json(os.path.join(out, "table.json"))["retrieval"] == result["rows"]
