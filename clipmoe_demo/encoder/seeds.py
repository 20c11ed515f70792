"""Scores over training seeds: mean +- standard deviation per model and metric, and whether the
difference between two models exceeds their seed spread.

The rule (stated in the report): a difference "exceeds the seed spread" when |mean_a - mean_b| >
std_a + std_b, the sample standard deviations (ddof 1) over the seeds. Welch's t statistic
(mean_a - mean_b) / sqrt(var_a / n_a + var_b / n_b) is given beside it; with 3 seeds per model
it is a rough guide, not a test at a stated level.
"""

from __future__ import annotations

import math
import statistics

SPREAD_RULE = "|mean difference| > std_a + std_b (sample standard deviations over the seeds)"


def aggregate(by_seed: dict[str, dict[str, dict]]) -> tuple[dict, dict]:
    """by_seed: {seed: {model: {metric: value}}} -> ({model: {metric: mean}}, {model: {metric: std}}).
    Metrics are those every seed has for the model; std is 0.0 from a single seed."""
    seeds = list(by_seed)
    mean, std = {}, {}
    for model in by_seed[seeds[0]]:
        runs = [by_seed[s][model] for s in seeds if model in by_seed[s]]
        metrics = [k for k in runs[0] if all(isinstance(r.get(k), (int, float)) for r in runs)]
        mean[model] = {k: statistics.fmean(r[k] for r in runs) for k in metrics}
        std[model] = {k: statistics.stdev(r[k] for r in runs) if len(runs) > 1 else 0.0 for k in metrics}
    return mean, std


def compare(by_seed: dict[str, dict[str, dict]], a: str, b: str, metric: str) -> dict:
    """Model a against model b on one metric over the seeds both have."""
    xa = [runs[a][metric] for runs in by_seed.values() if a in runs]
    xb = [runs[b][metric] for runs in by_seed.values() if b in runs]
    ma, mb = statistics.fmean(xa), statistics.fmean(xb)
    sa = statistics.stdev(xa) if len(xa) > 1 else 0.0
    sb = statistics.stdev(xb) if len(xb) > 1 else 0.0
    se = math.sqrt(sa * sa / len(xa) + sb * sb / len(xb))
    diff = ma - mb
    welch = diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    return {"a": a, "b": b, "metric": metric, "mean_a": ma, "mean_b": mb, "std_a": sa, "std_b": sb, "diff": diff,
            "welch_t": welch, "exceeds_spread": abs(diff) > sa + sb, "seeds": len(xa)}
