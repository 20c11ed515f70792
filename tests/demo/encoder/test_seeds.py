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
    assert [n.split("/")[0] for n in order] == [f"seed{s}" for s in plan.seeds for _ in range(len(order) // len(plan.seeds))]
    assert order.index("seed0/dmu") < order.index("seed0/upcycling")  # the longest chain first
    for seed in plan.seeds:
        for model in MODELS:
            assert jobs[f"seed{seed}/eval-{model}"][2] == [f"seed{seed}/{TRAINED_BY[model]}"]


def test_workers_start_at_the_niceness_asked():
    """run_demo(nice=...) (the chain's, so that its LM keeps a core): each worker process adds it to
    its niceness, read back inside the worker."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    from clipmoe_demo.encoder.run import _init_worker

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                             initargs=(1, os.getpid(), 3)) as pool:
        assert pool.submit(os.nice, 0).result() == min(19, os.nice(0) + 3)


def test_ordering_table_row_from_the_comparisons():
    from clipmoe_demo.encoder.mechanism_report import ordering_markdown
    from clipmoe_demo.encoder.run import comparisons

    def scores(shape):
        return {"shape_top1": shape, "colour_top1": 90.0, "count_top1": 30.0, "size_top1": 60.0, "i2t_r1": 5.0, "t2i_r1": 5.0}

    shapes = {"base": (30, 31, 32), "direct-ft": (30, 32, 34), "upcycling": (31, 31, 31), "clip-moe": (40, 42, 44),
              "clip-moe-last-half": (35, 35, 35)}
    by_seed = {f"seed{i}": {m: scores(float(v[i])) for m, v in shapes.items()} for i in range(3)}
    mean, std = aggregate(by_seed)
    nmi = {a: {"nmi": 0.5} for a in ("shape", "colour", "count", "size", "region")}
    summary = {"results": mean, "results_std": std, "comparisons": comparisons(by_seed),
               "mechanism": {"cluster_purity": [{"accumulated": nmi}]}}
    md = ordering_markdown(summary)
    row = next(line for line in md if line.startswith("| shape |"))
    # CLIP-MoE 42 ± 2 against direct fine-tune 32 ± 2 (+10 > 4) and sparse upcycling 31 ± 0 (+11 > 2)
    assert row == ("| shape | 0.50 | 31.0 ± 1.0 | 32.0 ± 2.0 | 31.0 ± 0.0 | 42.0 ± 2.0 | +10.0 (exceeds the spread) | "
                   "+11.0 (exceeds the spread) |")
    assert next(line for line in md if line.startswith("| colour |")).endswith("+0.0 (within the spread) | +0.0 (within the spread) |")


@pytest.mark.parametrize("value", ["a,b", "1,1", "-1", ""])
def test_bad_seeds_flag_is_one_line_exit_2(value, capsys, tmp_path):
    from clipmoe_demo import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["encoder", "--out", str(tmp_path / "x"), "--seeds", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("clipmoe-demo encoder: error: argument --seeds:") and "Traceback" not in "".join(err)
    assert not (tmp_path / "x").exists()  # refused before anything is written


def test_bad_workers_flag(capsys, tmp_path):
    from clipmoe_demo import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["encoder", "--out", str(tmp_path / "x"), "--workers", "0"])
    assert exc.value.code == 2 and "argument --workers: expected a positive integer" in capsys.readouterr().err
