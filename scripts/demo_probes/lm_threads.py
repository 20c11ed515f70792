"""Does torch's thread count change the chain's language model on this CPU, and what do more threads gain?

python scripts/demo_probes/lm_threads.py [--threads 1 2] [--steps 20] [--tokens 300]

The full plan's Llama (llava_runs.make_plan(False): hidden size, layers, vocabulary, batch), one
forward and backward on the same random tokens at each of the two thread counts: are the logits,
the loss and each weight gradient equal bit for bit? Then the seconds per training step (AdamW) at
each count. Prints one JSON line. The chain's LM changes its thread count only at a fixed step
(LlavaPlan.lm_two_threads_from), never at one set by timing, because on some CPUs the weight
gradients differ.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
from transformers import LlamaForCausalLM

from clipmoe_demo import tiny_llava as tiny
from clipmoe_demo.chain import llava_runs


def gradients(model, ids, threads: int):
    torch.set_num_threads(threads)
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    return out.logits.detach(), out.loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


def seconds_per_step(model, ids, threads: int, steps: int) -> float:
    torch.set_num_threads(threads)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    start = time.perf_counter()
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / steps


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs=2, default=(1, 2))
    p.add_argument("--steps", type=int, default=20, help="training steps timed at each thread count")
    p.add_argument("--tokens", type=int, default=300, help="tokens per row (the chain's texts: about 300)")
    a = p.parse_args(argv)
    plan = llava_runs.make_plan(quick=False)
    with tempfile.TemporaryDirectory() as directory:
        tiny.build_llm(directory, plan.vocab_size, plan.seed, hidden_size=plan.llm_hidden,
                       intermediate_size=2 * plan.llm_hidden, num_hidden_layers=plan.llm_layers)
        model = LlamaForCausalLM.from_pretrained(directory)
    ids = torch.randint(0, plan.vocab_size, (plan.batch, a.tokens), generator=torch.Generator().manual_seed(0))
    threads_before = torch.get_num_threads()
    try:
        (logits, loss, grads), (logits2, loss2, grads2) = (gradients(model, ids, n) for n in a.threads)
        timing = {str(n): round(seconds_per_step(model, ids, n, a.steps), 4) for n in a.threads}
    finally:
        torch.set_num_threads(threads_before)
    print(json.dumps({
        "threads": list(a.threads), "logits_equal": torch.equal(logits, logits2), "loss_equal": torch.equal(loss, loss2),
        "weight_gradients_differing": sorted(k for k in grads if not torch.equal(grads[k], grads2[k])),
        "weight_gradients": len(grads), "seconds_per_step": timing}))


if __name__ == "__main__":
    main()
