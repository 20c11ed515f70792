"""The chain's report: DIR/report.md, DIR/results.json and DIR/llava_loss_curves.png.

One page for the whole system: the DMU demo's zero-shot table (its own table and chance row),
the two LLaVA runs' benchmark scores side by side with the chance level of each score beside it,
the LLaVA loss curves (the trainers' trainer_state.json log_history), the demo's routing heat map
and loss curves (linked from the demo's folder), and the seconds each stage took.
"""

from __future__ import annotations

import json
import os
from collections import Counter

RUN_LABELS = {"dense": "LLaVA + dense CLIP tower", "clip-moe": "LLaVA + CLIP-MoE tower"}
LOSS_FIGURE = "llava_loss_curves.png"
DEMO_STAGE = "DMU demo (wall clock of run_demo; its stages above)"


# ---------------------------------------------------------------------------------------------
# scores

def script_flags(flags: list[str]) -> str:
    """A stage's extra trainer flags as the report shows them (DeepSpeed configs by file name)."""
    return " ".join(os.path.basename(f) if f.endswith(".json") else f for f in flags)


def chance_levels(benchmarks: dict) -> dict:
    """What guessing scores on each benchmark (percent). POPE: each image has as many "no" as
    "yes" questions, so a coin (or always "yes") gets 50 accuracy. GQA-style: a uniform guess
    among the answers of the question's type, and the majority answer of each type. MMBench-style:
    one of four letters (single pass)."""
    from .data import MC_LETTERS, gqa_chance

    gqa = gqa_chance(benchmarks["gqa"]["annotation_file"])
    return {"pope_accuracy": 50.0, "gqa_uniform": gqa["uniform"], "gqa_majority": gqa["majority"],
            "mmbench_accuracy": 100.0 / len(MC_LETTERS)}


def most_common_answer(answers_file: str) -> str:
    """The answer a run gave most often and its share: a model that answers everything alike
    (always "Yes", always "A") shows here, whatever its score."""
    with open(answers_file) as f:
        texts = Counter(json.loads(line)["text"].strip() for line in f if line.strip())
    text, count = texts.most_common(1)[0]
    return f"{text!r} ({100.0 * count / sum(texts.values()):.0f} %)"


def interval_table(intervals: dict) -> str:
    """The headline scores with their 95 % bootstrap intervals, both runs side by side, and the
    paired difference: its interval excluding 0 is what "the towers differ" means here."""
    from .bootstrap import HEADLINES

    first = intervals[HEADLINES[0][0]]
    runs = list(first["runs"])
    a, b = first["difference"]["of"]

    def cell(v):
        return f"{v['value']:.1f} [{v['low']:.1f}, {v['high']:.1f}]"

    lines = [f"| score (percent) [{first['level']:.0f} % bootstrap interval] | "
             + " | ".join(RUN_LABELS.get(r, r) for r in runs)
             + f" | difference {a} − {b} | towers differ? |",
             "|---|" + "---:|" * (len(runs) + 1) + "---|"]
    for name, label in HEADLINES:
        diff = intervals[name]["difference"]
        differ = "yes" if diff["low"] > 0 or diff["high"] < 0 else "no (interval holds 0)"
        lines.append(f"| {label} | " + " | ".join(cell(intervals[name]["runs"][r]) for r in runs)
                     + f" | {cell(diff)} | {differ} |")
    return "\n".join(lines)


def benchmark_rows(scores: dict, chance: dict, answers_dirs: dict | None = None) -> list[tuple[str, str, dict]]:
    """(benchmark / metric label, chance text, {run: value}) for the side-by-side table;
    with answers_dirs ({run: folder}) also each run's most common answer per benchmark."""
    from eval_mllm.benchmarks import REGISTRY

    runs = list(scores)
    rows = []
    splits = sorted(scores[runs[0]]["pope"]["splits"])
    for split in splits:
        rows.append((f"POPE {split} accuracy", f"{chance['pope_accuracy']:.1f}",
                     {r: scores[r]["pope"]["splits"][split]["accuracy"] for r in runs}))
    rows.append(("POPE accuracy (mean of splits)", f"{chance['pope_accuracy']:.1f}",
                 {r: scores[r]["pope"]["accuracy_mean"] for r in runs}))
    rows.append(("POPE F1 (mean of splits)", "66.7 (always yes)", {r: scores[r]["pope"]["f1_mean"] for r in runs}))
    rows.append(("POPE yes-ratio (adversarial)", "50.0 (balanced labels)",
                 {r: scores[r]["pope"]["splits"].get("adversarial", {}).get("yes_ratio") for r in runs}))
    rows.append(("GQA-style accuracy", f"{chance['gqa_uniform']:.1f} uniform / {chance['gqa_majority']:.1f} majority",
                 {r: scores[r]["gqa"]["accuracy"] for r in runs}))
    rows.append(("MMBench-style accuracy (single pass)", f"{chance['mmbench_accuracy']:.1f}",
                 {r: scores[r]["mmbench"]["accuracy"] for r in runs}))
    categories = sorted(scores[runs[0]]["mmbench"]["per_category"])
    for cat in categories:
        rows.append((f"MMBench-style {cat}", f"{chance['mmbench_accuracy']:.1f}",
                     {r: scores[r]["mmbench"]["per_category"].get(cat) for r in runs}))
    for name, label in (("pope", "POPE"), ("gqa", "GQA-style"), ("mmbench", "MMBench-style")):
        if answers_dirs:
            rows.append((f"{label}: most common answer (share)", "",
                         {r: most_common_answer(os.path.join(answers_dirs[r], REGISTRY[name].answers_file)) for r in runs}))
    return rows


def _fmt(v) -> str:
    if isinstance(v, str):
        return v
    return f"{v:.1f}" if isinstance(v, (int, float)) else "–"


def benchmark_table(scores: dict, chance: dict, answers_dirs: dict | None = None) -> str:
    runs = list(scores)
    lines = ["| benchmark (percent) | chance | " + " | ".join(RUN_LABELS.get(r, r) for r in runs) + " |",
             "|---|---:|" + "---:|" * len(runs)]
    for label, chance_text, values in benchmark_rows(scores, chance, answers_dirs):
        lines.append(f"| {label} | {chance_text} | " + " | ".join(_fmt(values[r]) for r in runs) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# loss curves

def read_log_history(stage_dir: str) -> list[dict]:
    """(step, loss) rows of a stage's trainer_state.json (LLaVA's train() saves it at the end)."""
    path = os.path.join(stage_dir, "trainer_state.json")
    with open(path) as f:
        history = json.load(f).get("log_history", [])
    return [{"step": h["step"], "loss": h["loss"]} for h in history if "loss" in h and "step" in h]


def plot_llava_losses(curves: dict[str, dict[str, list[dict]]], path: str, lm_history: list[dict] | None = None) -> str:
    """curves: {run: {stage: rows}}; one panel per stage, one line per run; first, the shared
    language model's text-only training (lm_history), when given."""
    from ..plotting import pyplot

    plt = pyplot()
    panels = [("language model (text only)", {"shared LLM": lm_history})] if lm_history else []
    for stage in sorted({s for per_run in curves.values() for s in per_run}):
        panels.append((f"LLaVA {stage}", {RUN_LABELS.get(run, run): per_run.get(stage, []) for run, per_run in curves.items()}))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.2), squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels):
        for label, rows in lines.items():
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.0, label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Training loss (LLaVA: trainer_state.json log_history)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# report

def chain_seconds(summary: dict) -> float:
    """The whole chain's time even where the demo's stages were reused from an earlier run (the
    demo resumes from its stages.json): its stages' recorded times + everything else the chain did
    (its world stage, written before the demo started, counted in both: an upper bound). The
    demo's seeds train in parallel worker processes, so their stage times overlap and this sum is
    an upper bound of the wall clock (total_seconds is the wall clock of this run)."""
    besides_demo = summary["total_seconds"] - summary["timings"][DEMO_STAGE]
    return sum(summary["demo"]["timings"].values()) + besides_demo


def saved_results(summary: dict) -> dict:
    """What results.json holds: the summary with the demo's summary replaced by the figures the
    report shows from it (its zero-shot table, chance row and stage times)."""
    demo = summary["demo"]
    return ({k: v for k, v in summary.items() if k != "demo"}
            | {"zero_shot": demo["results"], "zero_shot_chance": demo["chance"], "demo_timings": demo["timings"],
               "chain_seconds_with_demo_stage_times": chain_seconds(summary)})


def write_report(out_dir: str, summary: dict) -> str:
    """summary: mode, demo (run_demo's summary), demo_dir, plan, runs, scores, chance, curves,
    timings ({stage: seconds}, wall clock of the chain), total_seconds, cpu_count. Writes
    results.json, then report.md rendered from what results.json holds (render_saved redoes it)."""
    plot_llava_losses(summary["curves"], os.path.join(out_dir, LOSS_FIGURE), summary["language_model"]["history"])
    saved = saved_results(summary)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(saved, f, indent=1)
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write(markdown(out_dir, json.loads(json.dumps(saved))))  # as read back: tuples become lists
    return path


def render_saved(out_dir: str) -> str:
    """report.md's text from DIR/results.json alone (and the figures beside it)."""
    with open(os.path.join(out_dir, "results.json")) as f:
        return markdown(out_dir, json.load(f))


def markdown(out_dir: str, summary: dict) -> str:
    """summary: what results.json holds (saved_results)."""
    from ..encoder.report import results_table

    plan = summary["plan"]
    demo_rel = os.path.relpath(summary["demo_dir"], out_dir)
    runs = summary["runs"]
    md = [f"# CLIP-MoE chain: dense CLIP -> CLIP-MoE (DMU) -> LLaVA -> benchmarks ({summary['mode']} mode)", ""]
    md += [("Every number is measured by this run. Scores at or near the chance column mean the model has not "
            "learned that skill at this size/budget."), ""]

    md += ["## 1. Zero-shot CLIP results (DMU demo)", ""]
    md += [f"From the demo in `{demo_rel}/` (its full report: `{demo_rel}/report.md`); percent, last row = chance.", ""]
    md += [results_table(summary["zero_shot"], summary["zero_shot_chance"]), ""]

    md += ["## 2. LLaVA with each tower, same LLM, data and budget", ""]
    first = runs[next(iter(runs))]
    lm_rows = summary["language_model"]["history"]
    lm_loss = f"{lm_rows[0]['loss']:.3f} → {lm_rows[-1]['loss']:.3f}" if lm_rows else "–"
    md += [(f"Stage 1 (projector, `scripts/llava/pretrain.sh {script_flags(first['flags']['stage1'])}`, DeepSpeed ZeRO-2): "
            f"{first['steps']['stage1']} steps; stage 2 (projector + LLM, `scripts/llava/finetune.sh "
            f"{script_flags(first['flags']['stage2'])}`): {first['steps']['stage2']} steps; batch "
            f"{plan['batch']}; tower frozen in both. On one CPU rank gradient checkpointing saves no memory and "
            "ZeRO-3 (finetune.sh's own) has nothing to partition; both only cost time. "
            f"LLM: Llama, hidden {plan['llm_hidden']}, {plan['llm_layers']} layers, "
            f"sentencepiece BPE trained on the conversations, then {plan['lm_steps']} steps of causal-LM training on the "
            f"world's text ({plan['lm_steps'] * plan['batch']} conversations about text-only scenes, each with "
            f"existence, four-option and short-answer questions, the caption where the image goes; loss {lm_loss}), "
            f"shared by both runs. "
            f"Training data: {plan['n_train']} training scenes; "
            f"benchmarks: {plan['n_test']} held-out scenes "
            f"(POPE {summary['benchmarks']['pope']['n']}, GQA-style {summary['benchmarks']['gqa']['n']}, "
            f"MMBench-style {summary['benchmarks']['mmbench']['n']} questions), answered greedily and scored "
            "by `eval_mllm.run` in a worker process per run (the call below)."), ""]
    md += [benchmark_table(summary["scores"], summary["chance"], {r: run["answers_dir"] for r, run in runs.items()}), ""]
    intervals = summary["intervals"]
    some = intervals[next(iter(intervals))]
    md += [(f"Percentile bootstrap over questions ({some['n_resamples']} resamples, seed {some['seed']}; POPE resampled "
            "within each split); the difference is paired (both runs' answers to the same resampled questions)."), ""]
    md += [interval_table(intervals), ""]
    md += ["| run | vision tower | stage-1 loss first → last | stage-2 loss first → last |", "|---|---|---:|---:|"]
    for name, run in runs.items():
        cells = []
        for stage in ("stage1", "stage2"):
            rows = summary["curves"][name].get(stage, [])
            cells.append(f"{rows[0]['loss']:.3f} → {rows[-1]['loss']:.3f}" if rows else "–")
        md.append(f"| {RUN_LABELS.get(name, name)} | `{run['tower']}` | {cells[0]} | {cells[1]} |")
    md += [""]

    md += ["## 3. Figures", ""]
    md += [f"![LLaVA loss curves]({LOSS_FIGURE})", ""]
    for name in ("routing_clip-moe.png", "routing_upcycling.png", "loss_curves.png"):
        if os.path.isfile(os.path.join(summary["demo_dir"], name)):
            md += [f"![demo {name}]({demo_rel}/{name})", ""]

    md += ["## 4. Time per stage", ""]
    md += [(f"Wall clock, {summary['cpu_count']} CPU(s); 1-minute load average at the start: "
            f"{summary.get('load_average_1min_at_start')}. The two LLaVA runs train side by side, then answer side "
            "by side, one process (one torch thread) each, so their times overlap; the chain's LLaVA stage is their "
            "wall clock."), ""]
    md += ["| stage | seconds |", "|---|---:|"]
    md += [f"| demo: {name} | {sec:.1f} |" for name, sec in summary["demo_timings"].items()]
    md += [f"| {name} | {sec:.1f} |" for name, sec in summary["timings"].items()]
    for name, run in runs.items():
        md += [f"| &nbsp;&nbsp;{name}: {stage}{' (reused: finished by an earlier run)' if run['reused'].get(stage) else ''} "
               f"| {sec:.1f} |" for stage, sec in run["seconds"].items()]
    md += [f"| **total (wall clock of this command)** | **{summary['total_seconds']:.1f}** |"]
    md += [f"| **total, demo counted by the sum of its recorded stage times (its parallel workers' stages overlap: an upper bound)** | **{summary['chain_seconds_with_demo_stage_times']:.1f}** |", ""]
    md += ["## Settings", "", f"`{json.dumps(plan)}`", ""]
    md += ["## The evaluation call (CLIP-MoE run; the dense run's differs only in its folders)", "", "```python"]
    md += ["import eval_mllm", "", runs["clip-moe"]["eval_call"], "```", ""]
    return "\n".join(md)
