"""Bootstrap intervals of the chain's scores: against hand-computed percentiles on tiny inputs, and
the per-question reading against eval_mllm's scorers on benchmark files the chain writes."""

import json
import random

import pytest

from clipmoe_demo import world as W
from clipmoe_demo.chain import bootstrap as B
from clipmoe_demo.chain import data as D


def test_one_right_in_four_gives_0_to_75():
    # A resample's score is 25 k, k ~ Binomial(4, 1/4): P(k = 0) = 0.316, P(k <= 2) = 0.949,
    # P(k <= 3) = 0.996, so the 2.5th percentile is 0 and the 97.5th is 75.
    out = B.bootstrap({"a": {"all": [0, 0, 0, 1]}}, n_resamples=4000, seed=1)
    assert out["runs"]["a"] == {"value": 25.0, "low": 0.0, "high": 75.0}
    assert "difference" not in out and out["n_resamples"] == 4000 and out["level"] == 95.0


def test_strata_are_resampled_separately():
    # POPE-like: the mean of two splits' accuracies; within each split every answer is alike, so
    # every resample scores (100 + 0) / 2 (pooled resampling would spread it from 0 to 100).
    out = B.bootstrap({"a": {"s1": [1, 1, 1], "s2": [0, 0, 0]}}, n_resamples=200)
    assert out["runs"]["a"] == {"value": 50.0, "low": 50.0, "high": 50.0}
    assert B.bootstrap({"a": {"all": [1, 1]}}, n_resamples=50)["runs"]["a"] == {"value": 100.0, "low": 100.0, "high": 100.0}


def test_the_difference_is_paired():
    # Same questions for both runs: identical answers differ by 0 in every resample, although
    # each run alone spreads; one question apart (of 4), the difference is 25 k as above.
    same = B.bootstrap({"a": {"all": [0, 1, 0, 1]}, "b": {"all": [0, 1, 0, 1]}}, n_resamples=500)
    assert same["difference"] == {"of": ["a", "b"], "value": 0.0, "low": 0.0, "high": 0.0}
    assert same["runs"]["a"]["low"] < 50 < same["runs"]["a"]["high"]
    apart = B.bootstrap({"a": {"all": [1, 1, 1, 1]}, "b": {"all": [1, 1, 1, 0]}}, n_resamples=4000, seed=1)
    assert apart["difference"] == {"of": ["a", "b"], "value": 25.0, "low": 0.0, "high": 75.0}


def test_seeded_and_checked():
    runs = {"a": {"all": [0, 1, 1, 0, 1]}, "b": {"all": [1, 1, 0, 0, 0]}}
    assert B.bootstrap(runs, 300, seed=3) == B.bootstrap(runs, 300, seed=3)
    assert B.bootstrap(runs, 300, seed=3) != B.bootstrap(runs, 300, seed=4)
    with pytest.raises(ValueError, match="not the same questions"):
        B.bootstrap({"a": {"all": [0, 1]}, "b": {"all": [0]}}, 10)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("world"))
    W.write_world(root, W.WorldSettings(image_size=32, n_train=20, n_test=12))
    return D.write_benchmarks(root, str(tmp_path_factory.mktemp("bench")), n_test=12, n_train=20)


def _answers(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def test_point_values_are_the_scorers_figures(bench, tmp_path):
    """Answers that are partly right, in the forms the scorers parse ("No, ...", "Red.", "B. ...")."""
    from eval_mllm.scorers import gqa, mmbench, pope

    rng = random.Random(0)
    with open(bench["pope"]["question_file"]) as f:
        pope_q = [json.loads(line) for line in f]
    pope_file = _answers(tmp_path / "pope.jsonl", [
        {"question_id": q["question_id"], "text": rng.choice(["Yes", "No, there is not.", "yes"])} for q in pope_q])
    with open(bench["gqa"]["annotation_file"]) as f:
        ann = json.load(f)
    gqa_file = _answers(tmp_path / "gqa.jsonl", [
        {"question_id": k, "text": (v["answer"].capitalize() + ".") if rng.random() < 0.5 else "blue"} for k, v in ann.items()])
    mmb_file = _answers(tmp_path / "mmb.jsonl", [
        {"question_id": i, "text": rng.choice(["A", "B. x", "(C)", "D"])} for i in range(bench["mmbench"]["n"])])

    files = {"pope": pope_file, "gqa": gqa_file, "mmbench": mmb_file}
    got = B.headline_intervals(bench, {"x": files, "y": files}, n_resamples=100)
    expect = {"pope": pope.score(bench["pope"]["annotation_dir"], bench["pope"]["question_file"], pope_file)["accuracy_mean"],
              "gqa": gqa.score(bench["gqa"]["question_file"], gqa_file, bench["gqa"]["annotation_file"])["accuracy"],
              "mmbench": mmbench.score(bench["mmbench"]["question_file"], mmb_file)["accuracy"]}
    for name, value in expect.items():
        assert 0 < value < 100
        assert got[name]["runs"]["x"]["value"] == pytest.approx(value, abs=1e-9)
        assert got[name]["runs"]["x"]["low"] <= value <= got[name]["runs"]["x"]["high"]
        assert got[name]["difference"]["value"] == 0.0
    assert set(B.correctness(bench, files)["pope"]) == set(D.POPE_SPLITS)
