"""One LLaVA run of a finished chain again, with other plan settings (see README.md here).

python scripts/demo_probes/llava_variant.py --chain DEMO_OUT --out DIR [--tower dense] [--set stage2_lr=1e-3 ...]
                                           [--llm LM_DIR]

It reuses the chain's world, language model (or --llm's: a probe's trained LM, e.g.
chain_lm_vs_probe.py's OUT_DIR), tower and benchmark files (DEMO_OUT/results.json),
trains stage 1 and 2 through the same DeepSpeed scripts with the chain's plan changed by --set,
answers and scores the three benchmarks, and prints one JSON line of scores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import torch

from clipmoe_demo.chain import data as D
from clipmoe_demo.chain import llava_runs as R


def plan_with(base: R.LlavaPlan, settings: list[str]) -> R.LlavaPlan:
    """The plan with KEY=VALUE overrides, each value read as the field's declared type (a float
    field may hold an int in the plan, e.g. stage1_epochs=1, and still takes 0.5)."""
    types = {f.name: {"int": int, "float": float}[f.type] for f in dataclasses.fields(base)}
    changes = {}
    for item in settings:
        key, _, value = item.partition("=")
        if key not in types:
            raise SystemExit(f"--set {item}: no plan field {key!r}")
        try:
            changes[key] = types[key](value)
        except ValueError:
            raise SystemExit(f"--set {item}: {key} takes {'an integer' if types[key] is int else 'a number'}") from None
    return dataclasses.replace(base, **changes)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chain", required=True, help="a finished `clipmoe-demo chain --out` folder")
    p.add_argument("--out", required=True)
    p.add_argument("--tower", choices=R.RUNS, default="dense")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a LlavaPlan field, e.g. stage2_lr=1e-3")
    p.add_argument("--llm", help="a trained LM folder (tokenizer + Llama) instead of the chain's DEMO_OUT/llava/llm")
    a = p.parse_args(argv)
    with open(os.path.join(a.chain, "results.json")) as f:
        chain = json.load(f)
    plan = plan_with(R.make_plan(chain["mode"] == "quick"), a.set)
    torch.set_num_threads(1)
    world = os.path.join(a.chain, "demo", "world")
    paths = D.write_training_data(world, os.path.join(a.out, "data"), plan.n_train, plan.seed)
    tower = chain["runs"][a.tower]["tower"]
    run = R.train_run(a.tower, tower, a.llm or os.path.join(a.chain, "llava", "llm"), paths, world, os.path.join(a.out, a.tower), plan)
    scores = R.answer_and_score(run["stage2"], chain["benchmarks"], os.path.join(a.out, "eval"), plan, fresh=True)
    print(json.dumps({"tower": a.tower, "set": a.set, "llm": a.llm, "steps": run["steps"], "pope_accuracy_mean": scores["pope"]["accuracy_mean"],
                      "gqa_accuracy": scores["gqa"]["accuracy"], "mmbench_accuracy": scores["mmbench"]["accuracy"]}))


if __name__ == "__main__":
    main()
