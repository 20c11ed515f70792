"""Mean +- std over seeds and the seed-spread verdict, against values computed by hand."""

import math

import pytest

from clipmoe_demo.encoder.seeds import aggregate, compare

BY_SEED = {"seed0": {"moe": {"m": 10.0, "n": 1.0}, "base": {"m": 4.0, "n": 1.0}},
           "seed1": {"moe": {"m": 12.0, "n": 2.0}, "base": {"m": 5.0, "n": 2.0}},
           "seed2": {"moe": {"m": 14.0, "n": 3.0}, "base": {"m": 6.0, "n": 3.0}}}


def test_aggregate_by_hand():
    mean, std = aggregate(BY_SEED)
    assert mean["moe"]["m"] == 12.0 and mean["base"]["m"] == 5.0
    assert std["moe"]["m"] == pytest.approx(2.0)  # sqrt(((-2)^2 + 0 + 2^2) / (3 - 1))
    assert std["base"]["m"] == pytest.approx(1.0)


def test_compare_by_hand():
    r = compare(BY_SEED, "moe", "base", "m")
    assert r["diff"] == 7.0 and r["std_a"] == pytest.approx(2.0) and r["std_b"] == pytest.approx(1.0)
    assert r["welch_t"] == pytest.approx(7.0 / math.sqrt(4 / 3 + 1 / 3))
    assert r["exceeds_spread"] is True  # 7 > 2 + 1
    same = compare(BY_SEED, "moe", "base", "n")
    assert same["diff"] == 0.0 and same["exceeds_spread"] is False and same["welch_t"] == 0.0


def test_within_spread():
    by_seed = {"a": {"x": {"m": 1.0}, "y": {"m": 0.0}}, "b": {"x": {"m": 3.0}, "y": {"m": 4.0}}}
    r = compare(by_seed, "x", "y", "m")  # both means 2.0
    assert r["diff"] == 0.0 and not r["exceeds_spread"]
    by_seed["b"]["y"]["m"] = 1.0  # y: 0, 1 -> mean 0.5, std 0.707; x: mean 2, std 1.414
    r = compare(by_seed, "x", "y", "m")
    assert r["diff"] == 1.5 and not r["exceeds_spread"]  # 1.5 < 1.414 + 0.707


def test_training_jobs_order_and_needs():
    from clipmoe_demo.encoder.run import MODELS, TRAINED_BY, make_plan, training_jobs

    plan = make_plan(quick=True)
    jobs = training_jobs(plan)
    order = list(jobs)
    for name, (_, _, needs) in jobs.items():
        assert all(order.index(n) < order.index(name) for n in needs), name  # a job comes after what it needs
    assert order[:6] == [f"seed{s}/{k}" for k in ("base-init", "base") for s in plan.seeds]  # bases first
    for seed in plan.seeds:
        for model in MODELS:
            assert jobs[f"seed{seed}/eval-{model}"][2] == [f"seed{seed}/{TRAINED_BY[model]}"]
