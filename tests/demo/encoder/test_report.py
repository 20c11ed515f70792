"""report.md / results.json / PNGs from real (tiny) trainer logs, real routing statistics and real
zero-shot metrics; plus the stage bookkeeping that makes the demo resumable."""

import json
import os

import numpy as np
import pytest

from clipmoe_demo.encoder import report as R
from clipmoe_demo import world as W
from clipmoe_demo.encoder.base import QUICK, write_base_init
from clipmoe_demo.encoder.run import (
    Stages,
    chance_levels,
    evaluate_model,
    evaluation_set,
    make_plan,
)
from clipmoe_encoder.errors import CLIPMoEError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
M_BACKGROUND = "background"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A world of 24 + 12 scenes, a dense CLIP trained 3 steps by the real trainer, and its
    sparse-upcycled MoE (saved with tokenizer and processor) for routing statistics."""
    from transformers import AutoTokenizer, CLIPImageProcessor

    from clipmoe_encoder import upcycle
    from clipmoe_encoder.dmu.pipeline import routing_statistics
    from clipmoe_encoder.dmu.trainer import train_contrastive

    out = str(tmp_path_factory.mktemp("demo_report"))
    world = os.path.join(out, "world")
    W.write_world(world, W.WorldSettings(image_size=QUICK.image_size, n_train=24, n_test=12, seed=7))
    init = write_base_init(os.path.join(out, "base_init"), QUICK, W.vocabulary())
    base = train_contrastive(init, os.path.join(world, "train.jsonl"), out, epochs=1, batch_size=8, lr=1e-3,
                             logit_scale=None, stage_name="base")
    moe_dir = os.path.join(out, "moe")
    upcycle(base, num_experts=3, top_k=2, seed=1).save_pretrained(moe_dir)
    AutoTokenizer.from_pretrained(base).save_pretrained(moe_dir)
    CLIPImageProcessor.from_pretrained(base).save_pretrained(moe_dir)
    routing = routing_statistics(moe_dir, os.path.join(world, "test.jsonl"), image_root=world, max_samples=12)
    eval_set = evaluation_set(world)
    results = {"base": evaluate_model(base, eval_set), "clip-moe": evaluate_model(moe_dir, eval_set)}
    n_classes = {t: len(s["classnames"]) for t, s in eval_set["tasks"].items()}
    models = {"base": base, "clip-moe": moe_dir}
    summary = {"plan": make_plan(quick=True).to_dict(), "models": models, "results": results,
               "chance": chance_levels(12, 12, n_classes), "routing": {"clip-moe": routing},
               "timings": {"world": 0.5, "base": 2.25}, "eval_counts": {"retrieval_images": 12},
               "mechanism": _mechanism(out, world, moe_dir, eval_set), "cost": _cost(models, eval_set)}
    figures = R.write_report(out, summary)
    return out, summary, figures, routing


def _mechanism(out, world, moe_dir, eval_set):
    """The mechanism section's inputs, real where the tiny run allows: cluster labels of one stage
    written as DMU writes them (k = 2 per modality), routing by attribute of the upcycled MoE, and
    its experts extracted and evaluated."""
    import torch

    from clipmoe_demo.encoder import mechanism as M
    from clipmoe_encoder.dmu.features import save_tensors

    dmu_dir = os.path.join(out, "dmu")
    os.makedirs(os.path.join(dmu_dir, "clusters"))
    labels = torch.arange(24) % 4
    save_tensors({"labels": labels}, os.path.join(dmu_dir, "clusters", "labels_stage0.safetensors"))
    experts = M.extract_experts(moe_dir, os.path.join(out, "experts"))
    return {"cluster_purity": M.stage_cluster_purity(dmu_dir, W.read_scenes(world, "train"), 2),
            "routing_by_attribute": M.routing_by_attribute(moe_dir, world, 12, batch_size=5),
            "experts": experts, "expert_results": {f"expert{j}": evaluate_model(p, eval_set) for j, p in enumerate(experts)}}


def _cost(models, eval_set):
    from clipmoe_demo.encoder.run import _cost as cost

    return cost(models, eval_set)


def test_report_is_rendered_from_the_saved_json(tiny_run):
    out, *_ = tiny_run
    with open(os.path.join(out, "report.md")) as f:
        assert R.render_saved(out) == f.read()
    with open(os.path.join(out, "results.json")) as f:
        saved = json.load(f)
    assert saved["mechanism"]["cluster_purity"][0]["clusters"] == 4
    assert set(saved["cost"]) == {"base", "clip-moe"} and saved["cost"]["base"]["relative"] == 1.0


def test_routing_by_attribute_covers_every_token(tiny_run):
    out, summary, *_ = tiny_run
    routing = summary["mechanism"]["routing_by_attribute"]
    assert routing["samples"] == 12 and routing["num_experts"] == 3
    for tower in ("vision", "text"):
        for attribute, per_layer in routing[tower].items():
            assert len(per_layer) == len(routing["layers"][tower])
            for table in per_layer:
                for row in table.values():
                    assert sum(row["share"]) == pytest.approx(1.0)
    # every held-out caption names its main group's colour once: 12 colour-word tokens at least
    assert sum(r["tokens"] for r in routing["text"]["colour"][0].values()) >= 12
    # the vision tables count patches: background + object patches <= 12 scenes x 64 patches
    vision = routing["vision"]["shape"][0]
    assert M_BACKGROUND in vision and sum(r["tokens"] for r in vision.values()) <= 12 * 64


def test_upcycled_experts_alone_score_as_the_base(tiny_run):
    """Upcycled experts are copies of the base FFN: each alone is the base exactly."""
    _, summary, *_ = tiny_run
    for scores in summary["mechanism"]["expert_results"].values():
        assert scores == summary["results"]["base"]


def test_loss_logs_are_the_trainers(tiny_run):
    out, *_ = tiny_run
    logs = R.read_loss_logs(out)
    assert list(logs) == ["base"]
    assert [row["step"] for row in logs["base"]] == [1, 2, 3]  # 24 samples / batch 8
    assert all(np.isfinite(row["loss"]) for row in logs["base"])


def test_routing_matrices_from_real_statistics(tiny_run):
    *_, routing = tiny_run
    m = R.routing_matrices(routing)
    assert set(m) == {"vision", "text"}
    for tower in m.values():
        assert tower["first"].shape == (QUICK.num_layers, 3) and tower["second"].shape == (QUICK.num_layers, 3)
        np.testing.assert_allclose(tower["first"].sum(axis=1), 1.0, atol=1e-9)  # every token has one 1st choice
        np.testing.assert_allclose(tower["second"].sum(axis=1), 1.0, atol=1e-9)
        assert tower["layers"] == list(range(QUICK.num_layers))
        assert (tower["first"] + tower["second"] <= 1.0 + 1e-9).all()  # an expert is never both choices of a token


def test_results_json_holds_the_zeroshot_metrics(tiny_run):
    from clipmoe_encoder.zeroshot import (
        evaluate_classification,
        evaluate_retrieval,
        load_encoder,
    )

    out, summary, _, _ = tiny_run
    with open(os.path.join(out, "results.json")) as f:
        saved = json.load(f)
    # evaluate_model encodes each image once; it must give what separate zero-shot evaluations
    # (each encoding its own images) give
    eval_set = evaluation_set(os.path.join(out, "world"))
    encoder = load_encoder(summary["models"]["base"])
    expected = evaluate_retrieval(encoder, eval_set["images"], eval_set["captions"])
    for task, spec in eval_set["tasks"].items():
        if spec["templates"] is None:  # count: per-class prompts no template writes
            continue
        res = evaluate_classification(encoder, spec["images"], spec["labels"], spec["classnames"], spec["templates"],
                                      ks=(1, 5) if len(spec["classnames"]) > 5 else (1,))
        res.pop("num_templates")
        expected.update({f"{task}_{k}": v for k, v in res.items()})
    got = {k: v for k, v in saved["models"]["base"].items() if not k.startswith("count_")}
    assert got == pytest.approx(expected)
    assert 0 <= saved["models"]["base"]["count_top1"] <= 100 and saved["models"]["base"]["count_num_classes"] == 4
    assert saved["chance"]["i2t_r1"] == pytest.approx(100 / 12) and saved["chance"]["shape_top1"] == pytest.approx(100 / 6)
    assert saved["timings_s"] == {"world": 0.5, "base": 2.25}
    assert set(saved["figures"]) == {"loss_curves", "routing_clip-moe", "cluster_purity", "routing_by_attribute"}


def test_report_md_table_and_figures(tiny_run):
    out, summary, figures, _ = tiny_run
    with open(os.path.join(out, "report.md")) as f:
        text = f.read()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    base_row = next(r for r in rows if r.startswith("| dense base |"))
    cells = [c.strip() for c in base_row.strip("|").split("|")][1:]
    assert cells == [f"{summary['results']['base'][k]:.1f}" for k, _ in R.METRIC_COLUMNS]
    chance_row = next(r for r in rows if r.startswith("| *chance* |"))
    assert f"{100 / 12:.1f}" in chance_row and f"{100 / 6:.1f}" in chance_row
    assert "| **total** | **2.8** |" in text  # the sum of the stage times
    for path in figures.values():
        with open(path, "rb") as f:
            assert f.read(8) == PNG_MAGIC
        assert os.path.basename(path) in text
        assert os.path.getsize(path) > 5000


def test_chance_levels():
    c = chance_levels(200, 200, {"shape": 6, "colour": 4})
    assert c["i2t_r1"] == 0.5 and c["t2i_r10"] == 5.0
    assert c["shape_top1"] == pytest.approx(100 / 6) and c["colour_top5"] == 100.0


def test_stages_skip_finished_work_and_refuse_other_settings(tmp_path):
    calls = []
    plan = make_plan(quick=True)
    stages = Stages(str(tmp_path), plan, log=lambda *_: None)
    assert stages.run("a", lambda: calls.append("a") or {"x": 1}) == {"x": 1}
    out_path = str(tmp_path / "thing")
    os.makedirs(out_path)
    stages.run("b", lambda: calls.append("b") or out_path)
    again = Stages(str(tmp_path), plan, log=lambda *_: None)
    assert again.run("a", lambda: calls.append("a2")) == {"x": 1}
    assert again.run("b", lambda: calls.append("b2") or out_path) == out_path
    assert calls == ["a", "b"] and set(again.timings()) == {"a", "b"}
    os.rmdir(out_path)  # an output that vanished is made again
    again.run("b", lambda: calls.append("b3") or os.makedirs(out_path) or out_path)
    assert calls[-1] == "b3"
    with pytest.raises(CLIPMoEError, match="other settings"):
        Stages(str(tmp_path), make_plan(quick=False), log=lambda *_: None)
    # other seeds or workers change no stage's result: the directory is reused, the plan updated
    import dataclasses

    other = Stages(str(tmp_path), dataclasses.replace(plan, seeds=(4, 5), workers=1), log=lambda *_: None)
    assert other.run("a", lambda: calls.append("a3")) == {"x": 1} and "a3" not in calls
    with open(os.path.join(str(tmp_path), "stages.json")) as f:
        assert json.load(f)["plan"]["seeds"] == [4, 5]
