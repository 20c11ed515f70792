"""`clipmoe-demo chain --out DIR [--quick]`: the whole system on the embedded default.

DMU demo (dense CLIP -> CLIP-MoE, zero-shot table) -> the two towers -> a small LLM trained on
the world's text -> a small LLaVA trained twice through the DeepSpeed scripts (dense tower, CLIP-MoE tower) -> POPE/GQA/MMBench-style
benchmarks on held-out scenes -> DIR/report.md. Quick mode: toy sizes, under 5 minutes on 2 cores.
"""

from __future__ import annotations

import os
import threading
import time


# seconds between the console's progress lines of the long phases (LM training, LLaVA stages)
PROGRESS_EVERY_S = {False: 30.0, True: 10.0}
# added to the DMU demo's worker processes' niceness while the LM trains beside them: the most
# (19), so that they take only what the LM leaves of the cores
DEMO_NICE = 19
LM_STAGE = "language model: tokenizer, Llama, causal-LM training on the world's text (beside the DMU demo)"


def in_background(fn):
    """Starts fn() in a daemon thread; returns a callable that waits for it and returns its result
    (or raises its error). A daemon thread, so that Ctrl-C stops the chain at once rather than
    after the thread's work (an executor's threads are joined at exit)."""
    outcome = {}

    def target():
        try:
            outcome["result"] = fn()
        except BaseException as error:  # handed to the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def result():
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    return result


def run_chain(out_dir: str, quick: bool = False, log=print) -> dict:
    import torch

    from ..encoder.run import run_demo, write_world_first
    from . import bootstrap, data, language_model, llava_runs, report
    from .progress import whole_lines

    start = time.perf_counter()
    out_dir = os.path.abspath(out_dir)
    load = round(os.getloadavg()[0], 2)
    timings = {}
    log = whole_lines(log)  # the language model's thread prints beside the demo

    def timed(name, fn):
        t = time.perf_counter()
        result = fn()
        timings[name] = time.perf_counter() - t
        log(f"[chain] {name}: {timings[name]:.1f} s")
        return result

    demo_dir = os.path.join(out_dir, "demo")
    plan = llava_runs.make_plan(quick)
    llava_dir = os.path.join(out_dir, "llava")
    # The demo's world first (its first stage, recorded there): the LLM needs only its text.
    world_dir = write_world_first(demo_dir, quick=quick, log=log)
    paths, benchmarks = timed("conversations + benchmarks", lambda: (
        data.write_training_data(world_dir, os.path.join(llava_dir, "data"), plan.n_train, plan.seed),
        data.write_benchmarks(world_dir, os.path.join(out_dir, "benchmarks"), plan.n_test, plan.n_train, plan.seed)))
    every = PROGRESS_EVERY_S[quick]

    # The language model trains in a thread beside the DMU demo: the demo's two worker processes
    # train the seeds, its main process mostly waits for them, and torch's ops release the GIL.
    # One torch thread everywhere (the demo's setting). The workers run at a lower priority
    # (DEMO_NICE), so that the LM keeps a whole core and the workers share the other until it is
    # done; at equal priority the three threads shared both cores and the LM, finishing last, held
    # up the LLaVA runs. The quick LM takes a second thread from a fixed step
    # (plan.lm_two_threads_from), never at a step set by timing: some CPUs split a weight
    # gradient's sum over the batch's tokens between threads, so a switch when the demo happens to
    # finish made the model depend on timing.
    torch.set_num_threads(1)
    llm_result = in_background(lambda: timed(LM_STAGE, lambda: language_model.build_language_model(
        os.path.join(llava_dir, "llm"), world_dir, paths, plan, log, every)))
    demo = timed(report.DEMO_STAGE, lambda: run_demo(demo_dir, quick=quick, log=log, nice=DEMO_NICE))
    llm = llm_result()
    towers = timed("vision towers from the demo's checkpoints",
                   lambda: llava_runs.tower_names(demo["models"], os.path.join(llava_dir, "towers")))
    runs = timed("LLaVA: both runs (stage 1, stage 2, answers and scores)", lambda: llava_runs.run_both(
        towers, llm["dir"], paths, benchmarks, llava_dir, plan, log, every))
    scores = {name: run.pop("scores") for name, run in runs.items()}  # scored as each run answered
    intervals = bootstrap.headline_intervals(
        benchmarks, {name: llava_runs.answers_files(run["answers_dir"]) for name, run in runs.items()}, seed=plan.seed)
    curves = {name: {stage: report.read_log_history(run[stage]) for stage in ("stage1", "stage2")}
              for name, run in runs.items()}
    summary = {"mode": "quick" if quick else "full", "demo": demo, "demo_dir": demo_dir,
               "plan": llava_runs.plan_dict(plan), "benchmarks": benchmarks, "runs": runs, "scores": scores,
               "intervals": intervals, "chance": report.chance_levels(benchmarks), "curves": curves, "language_model": llm, "timings": timings,
               "load_average_1min_at_start": load, "cpu_count": os.cpu_count()}
    summary["total_seconds"] = time.perf_counter() - start
    path = report.write_report(out_dir, summary)
    log(report.benchmark_table(scores, summary["chance"], {name: run["answers_dir"] for name, run in runs.items()}))
    log(report.interval_table(intervals))
    log(f"[chain] total {summary['total_seconds']:.1f} s (with the demo's recorded stage times summed, an upper bound: "
        f"{report.chain_seconds(summary):.1f} s); report: {path}")
    return summary
