"""How fast is LLaVA's stage 2 on a finished chain with other trainer flags?

python scripts/demo_probes/llava_stage_speed.py --chain DEMO_OUT --out DIR --steps N [--tower dense] [FLAG ...]

Trains N steps of `finetune.sh` (tiny mode, as the chain runs it) from the chain's stage-1
projector, LM, tower and stage-2 data, with the script's own flags and then FLAGs (the chain's
defaults are left out: e.g. `--deepspeed .../zero3.json --gradient_checkpointing True` is the
script as published), and prints one JSON line: the trainer's own runtime and steps per second
(start-up not counted) and the last logged loss. Run two side by side, one per core, as the
chain runs its two LLaVAs.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re

from clipmoe_demo.chain import llava_runs as R
from clipmoe_demo.chain.progress import parse_trainer_output

_SUMMARY = re.compile(r"\{'train_runtime'.*?\}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chain", required=True, help="a finished `clipmoe-demo chain --out` folder")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--tower", choices=R.RUNS, default="dense")
    a, flags = p.parse_known_args(argv)
    with open(os.path.join(a.chain, "results.json")) as f:
        chain = json.load(f)
    plan = R.make_plan(chain["mode"] == "quick")
    run = chain["runs"][a.tower]
    llava = os.path.join(a.chain, "llava")
    out = os.path.join(os.path.abspath(a.out), "llava-stage2")  # LLaVA's loader wants "llava" in the name
    os.makedirs(a.out, exist_ok=True)
    log_path = os.path.join(a.out, "stage2.log")
    script, env, args = R.stage_launch("stage2", plan, run["tower"], os.path.join(llava, "llm"),
                                       os.path.join(llava, "data", "finetune.json"), chain["benchmarks"]["image_folder"],
                                       os.path.abspath(a.out), out, a.steps, stage1_dir=run["stage1"], flags=flags)
    R._script(script, env, args, log_path)
    with open(log_path) as f:
        log = f.read()
    summary = ast.literal_eval(_SUMMARY.findall(log)[-1])
    print(json.dumps({"tower": a.tower, "flags": flags, "steps": a.steps, "train_runtime_s": float(summary["train_runtime"]),
                      "steps_per_second": float(summary["train_steps_per_second"]), "last_loss": parse_trainer_output(log)["loss"]}))


if __name__ == "__main__":
    main()
