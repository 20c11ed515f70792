"""The chain's language model again with another seed or plan settings: how much of the LLaVA scores is the LM's luck?

python scripts/demo_probes/lm_variant.py --chain DEMO_OUT --out DIR [--seed S] [--set lm_lr=1e-3 ...]
                                        [--answer-weight K] [--eval-every N]

Trains the LM as `clipmoe-demo chain` does (language_model.build_untrained, training_texts and
train_language_model: the same tokenizer corpus, sizes, texts' recipe, steps and learning rate, one
torch thread) on the chain's world, with the plan's seed (the Llama's initialisation, the draws of
each text's questions, the batch order) and any LlavaPlan field changed; --answer-weight K weighs the
loss of the assistant's answer tokens K times every other token's (the chain's: 1). Saves it in
DIR/llm and prints the text probe's figures (lm_existence_probe.py's Evaluation: existence balanced /
four-option / short-answer accuracy), every N steps on the way with --eval-every. Then
`llava_variant.py --chain DEMO_OUT --llm DIR/llm --tower dense|clip-moe --out ...` runs LLaVA on it
with everything else the chain's (its benchmarks, towers, LLaVA seed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the other probes
import lm_existence_probe as P  # noqa: E402
from llava_variant import plan_with  # noqa: E402
from transformers import AutoTokenizer, LlamaForCausalLM  # noqa: E402

from clipmoe_demo import world as W  # noqa: E402
from clipmoe_demo.chain import language_model as L  # noqa: E402
from clipmoe_demo.chain import llava_runs as R  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chain", required=True, help="a finished `clipmoe-demo chain --out` folder")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, help="the LM's seed (the chain's: its plan's, 0)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a LlavaPlan field, e.g. lm_lr=1e-3")
    p.add_argument("--answer-weight", type=float, default=1.0, help="loss weight of the answer tokens (the chain's: 1)")
    p.add_argument("--eval-every", type=int, default=0, help="also evaluate every N steps on the way")
    a = p.parse_args(argv)
    with open(os.path.join(a.chain, "results.json")) as f:
        chain = json.load(f)
    plan = plan_with(R.make_plan(chain["mode"] == "quick"), a.set)
    if a.seed is not None:
        plan = dataclasses.replace(plan, seed=a.seed)
    world = os.path.join(a.chain, "demo", "world")
    data = {name: os.path.join(a.chain, "llava", "data", f"{name}.json") for name in ("pretrain", "finetune")}
    torch.set_num_threads(1)
    llm_dir = os.path.join(a.out, "llm")
    L.build_untrained(llm_dir, data, plan)
    evaluate = P.Evaluation(AutoTokenizer.from_pretrained(llm_dir), W.read_settings(world))
    start = time.perf_counter()

    def on_the_way(step, model):
        if a.eval_every and step % a.eval_every == 0 and step < plan.lm_steps:
            print(json.dumps({"step": step, "seconds": round(time.perf_counter() - start), "text_probe": evaluate(model)}), flush=True)

    texts = L.training_texts(world, plan.lm_steps * plan.batch, plan.seed)
    more = (plan.lm_two_threads_from, 2) if plan.lm_two_threads_from else None
    history = L.train_language_model(llm_dir, texts, plan.lm_steps, plan.batch, plan.lm_lr, plan.seed, log=print,
                                     progress_every=120.0, after_step=on_the_way, threads_from=more,
                                     answer_weight=a.answer_weight)
    print(json.dumps({"seed": plan.seed, "set": a.set, "answer_weight": a.answer_weight, "llm": llm_dir,
                      "seconds": round(time.perf_counter() - start), "last_loss": history[-1], "text_probe": evaluate(LlamaForCausalLM.from_pretrained(llm_dir))}))


if __name__ == "__main__":
    main()
