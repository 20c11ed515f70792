"""The demo's outputs: results.json, report.md, routing heat maps and loss curves (PNG).

Only measured values go in: the metrics of each model, the chance level of each metric, the
time of each stage, and plots drawn from the trainers' own log.jsonl files and the routing
statistics of held-out data.
"""

from __future__ import annotations

import json
import os

import numpy as np

from ..plotting import pyplot
from .mechanism_report import cost_markdown, mechanism_figures, mechanism_markdown, ordering_markdown, seeds_markdown

METRIC_COLUMNS = (
    ("i2t_r1", "I→T R@1"), ("i2t_r5", "I→T R@5"), ("i2t_r10", "I→T R@10"),
    ("t2i_r1", "T→I R@1"), ("t2i_r5", "T→I R@5"), ("t2i_r10", "T→I R@10"),
    ("shape_top1", "shape top-1"), ("colour_top1", "colour top-1"), ("count_top1", "count top-1"), ("size_top1", "size top-1"),
)
MODEL_LABELS = {"base": "dense base", "direct-ft": "direct fine-tune", "upcycling": "sparse upcycling", "clip-moe": "CLIP-MoE (DMU)",
                "clip-moe-last-half": "CLIP-MoE, experts in the last half of the blocks",
                **{f"expert{j}": f"expert {j} alone" for j in range(16)}}


# ---------------------------------------------------------------------------------------------
# loss curves

def read_loss_logs(out_dir: str) -> dict[str, list[dict]]:
    """Every log.jsonl under out_dir (one per training stage), keyed by its directory relative to
    out_dir, with the lines that carry a step and a loss."""
    logs = {}
    for root, _, files in sorted(os.walk(out_dir)):
        if "log.jsonl" not in files:
            continue
        rows = []
        with open(os.path.join(root, "log.jsonl")) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by an interrupted run
                if isinstance(row, dict) and "step" in row and isinstance(row.get("loss"), (int, float)):
                    rows.append(row)
        if rows:
            logs[os.path.relpath(root, out_dir)] = rows
    return logs


def plot_loss_curves(logs: dict[str, list[dict]], path: str) -> str | None:
    if not logs:
        return None
    plt = pyplot()
    n = len(logs)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (name, rows_) in zip(axes.flat, logs.items()):
        steps = [r["step"] for r in rows_]
        losses = [r["loss"] for r in rows_]
        ax.plot(steps, losses, lw=1.0)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("training loss per stage (from each stage's log.jsonl)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# routing heat maps (the paper's Fig. 3)

def routing_matrices(stats: dict) -> dict[str, dict[str, np.ndarray]]:
    """{tower: {"first", "second": (MoE layers, experts) arrays, "layers": block indices}} from
    routing_statistics(): per tower and MoE layer, the fraction of (non-padding) tokens whose 1st /
    2nd choice is each expert."""
    out = {}
    for tower in ("vision", "text"):
        t = stats.get(tower)
        if not t or not t.get("first_choice"):
            continue
        first = np.asarray(t["first_choice"], dtype=float)
        second = np.asarray(t["second_choice"], dtype=float) if t.get("second_choice") else None
        out[tower] = {"first": first, "second": second, "layers": list(t.get("layers", range(first.shape[0])))}
    return out


def plot_routing(matrices: dict[str, dict[str, np.ndarray]], title: str, path: str) -> str | None:
    if not matrices:
        return None
    plt = pyplot()
    towers = list(matrices)
    fig, axes = plt.subplots(len(towers), 2, figsize=(8.0, 1.2 + 0.55 * max(m["first"].shape[0] for m in matrices.values()) * len(towers)),
                             squeeze=False)
    for r, tower in enumerate(towers):
        for c, (choice, label) in enumerate((("first", "1st choice"), ("second", "2nd choice"))):
            m = matrices[tower][choice]
            ax = axes[r][c]
            if m is None:  # top-1 routing has no 2nd choice
                ax.axis("off")
                continue
            im = ax.imshow(m, vmin=0.0, vmax=max(1e-9, float(m.max())), cmap="viridis", aspect="auto")
            for (i, j), v in np.ndenumerate(m):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 * m.max() else "black")
            ax.set_xticks(range(m.shape[1]), [f"E{j}" for j in range(m.shape[1])], fontsize=7)
            ax.set_yticks(range(m.shape[0]), [f"layer {i}" for i in matrices[tower]["layers"]], fontsize=7)
            ax.set_title(f"{tower} tower: fraction of tokens, {label}", fontsize=8)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# report.md and results.json

def _fmt(v) -> str:
    return f"{v:.1f}" if isinstance(v, (int, float)) else "–"


def results_table(results: dict, chance: dict, std: dict | None = None) -> str:
    """One row per model; with `std` ({model: {metric: std}}) each cell is mean ± std."""
    head = "| model | " + " | ".join(label for _, label in METRIC_COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(METRIC_COLUMNS)
    lines = [head, rule]
    for name, metrics in results.items():
        spread = (std or {}).get(name, {})
        cells = [_fmt(metrics.get(k)) + (f" ± {spread[k]:.1f}" if k in spread else "") for k, _ in METRIC_COLUMNS]
        lines.append(f"| {MODEL_LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    lines.append("| *chance* | " + " | ".join(_fmt(chance.get(k)) for k, _ in METRIC_COLUMNS) + " |")
    return "\n".join(lines)


def _best(results: dict, key: str) -> str:
    scored = [(m.get(key), name) for name, m in results.items() if isinstance(m.get(key), (int, float))]
    if not scored:
        return "–"
    top = max(v for v, _ in scored)
    return ", ".join(MODEL_LABELS.get(n, n) for v, n in scored if v == top) + f" ({top:.1f})"


def write_report(out_dir: str, summary: dict) -> dict:
    """summary: plan, models, results, chance, routing, timings, eval_counts (from run.run_demo)."""
    figures = {}
    figures["loss_curves"] = plot_loss_curves(read_loss_logs(out_dir), os.path.join(out_dir, "loss_curves.png"))
    for name, stats in summary.get("routing", {}).items():
        figures[f"routing_{name}"] = plot_routing(
            routing_matrices(stats), f"{MODEL_LABELS.get(name, name)}: expert choice per layer on held-out data",
            os.path.join(out_dir, f"routing_{name}.png"))
    figures.update(mechanism_figures(summary, out_dir))
    figures = {k: v for k, v in figures.items() if v}

    saved = {"models": summary["results"], "chance": summary["chance"], "eval_counts": summary.get("eval_counts", {}),
             "machine": summary.get("machine", {}), "dmu_settings": summary.get("dmu_settings"),
             "timings_s": summary["timings"], "checkpoints": summary.get("models", {}),
             "plan": summary["plan"], "mechanism": summary.get("mechanism"), "cost": summary.get("cost"),
             "results_std": summary.get("results_std"), "results_by_seed": summary.get("results_by_seed"),
             "checkpoints_by_seed": summary.get("checkpoints_by_seed"), "comparisons": summary.get("comparisons"),
             "figures": {k: os.path.basename(v) for k, v in figures.items()}}
    _write_atomically(os.path.join(out_dir, "results.json"), json.dumps(saved, indent=1))
    # report.md is rendered from results.json as written, so every number in it is one the run saved
    _write_atomically(os.path.join(out_dir, "report.md"), render_saved(out_dir))
    return figures


def _write_atomically(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def render_saved(out_dir: str) -> str:
    """report.md's text from DIR/results.json alone (its figures named there, beside it)."""
    with open(os.path.join(out_dir, "results.json")) as f:
        saved = json.load(f)
    summary = dict(saved, results=saved["models"], timings=saved["timings_s"], models=saved["checkpoints"])
    return markdown(summary, {k: os.path.join(out_dir, v) for k, v in saved["figures"].items()})


def markdown(summary: dict, figures: dict) -> str:
    plan, results, chance = summary["plan"], summary["results"], summary["chance"]
    counts = summary.get("eval_counts", {})
    md = [f"# CLIP-MoE demo ({plan['mode']} mode)", ""]
    md += [("Zero-shot results on the held-out split of the procedural world (percent; the last row is what "
            "a random ranking scores). Retrieval uses the detailed caption of each held-out scene "
            f"({counts.get('retrieval_images', '?')} images, one caption each); classification asks for the shape / colour / "
            "count / size of scenes whose groups agree on it (" +
            " / ".join(str(counts.get(f"{t}_images", "?")) for t in ("shape", "colour", "count", "size")) + " images; "
            "prompts ensembled over the other attributes, every prompt an in-world caption)."), ""]
    seeds = plan.get("seeds", [])
    if summary.get("results_std"):
        md += [f"Mean ± sample standard deviation over {len(seeds)} training seeds ({', '.join(map(str, seeds))}; the world is "
               "the same for all; each seed trains its own dense base and every model from it)."]
        md += [""]
    md += [results_table(results, chance, summary.get("results_std")), ""]
    md += ["Best per metric (mean): " + "; ".join(f"{label}: {_best(results, k)}" for k, label in METRIC_COLUMNS), ""]
    top5 = (("shape_top5", "shape top-5"), ("colour_top5", "colour top-5"))
    md += ["| model | " + " | ".join(label for _, label in top5) + " |", "|---|---:|---:|"]
    md += [f"| {MODEL_LABELS.get(n, n)} | " + " | ".join(_fmt(m.get(k)) for k, _ in top5) + " |" for n, m in results.items()]
    md += ["| *chance* | " + " | ".join(_fmt(chance.get(k)) for k, _ in top5) + " |", ""]
    base = results.get("base", {})
    if "i2t_r1" in base:
        above = base["i2t_r1"] > chance["i2t_r1"] and base["t2i_r1"] > chance["t2i_r1"]
        md += [(f"Dense base above chance on held-out retrieval: **{'yes' if above else 'no'}** (R@1 I→T {base['i2t_r1']:.1f}, "
                f"T→I {base['t2i_r1']:.1f}; chance {chance['i2t_r1']:.1f})."), ""]
    md += ordering_markdown(summary)
    md += seeds_markdown(summary)
    md += cost_markdown(summary)
    md += mechanism_markdown(summary, figures, results_table)
    md += _timing_section(summary)
    md += ["## Settings", ""]
    md += [f"- **{key}**: `{json.dumps(value)}`" for key, value in plan.items()]
    if summary.get("dmu_settings"):
        md += [f"- **DMUSettings** (DMU and both baselines): `{json.dumps(summary['dmu_settings'])}`"]
    md += [""]
    if figures:
        md += ["## Figures", ""]
        md += [f"![{k}]({os.path.basename(v)})" for k, v in figures.items()]
        md += [""]
    return "\n".join(md)


def _timing_section(summary: dict) -> list[str]:
    timings, machine = summary["timings"], summary.get("machine", {})
    md = ["## Time per stage", ""]
    if machine:
        md += [(f"Measured with {machine.get('torch_threads')} torch thread(s) on {machine.get('cpu_count')} CPU(s); 1-minute load "
                f"average at the start of this run: {machine.get('load_average_1min_at_start')}. Stages reused from an earlier run "
                "keep the time they took then."), ""]
        if "wall_seconds_this_run" in machine:
            md += [(f"The training and evaluation jobs of the seeds ran in {machine.get('workers')} worker processes side by side, "
                    "so the stage times add up to more than the wall clock. This run: "
                    f"{machine['wall_seconds_this_run']:.1f} s wall clock for {machine.get('stages_run_now')} stage(s) run now; "
                    f"1-minute load average at its end: {machine.get('load_average_1min_at_end')}."), ""]
    md += ["| stage | seconds |", "|---|---:|"]
    md += [f"| {name} | {sec:.1f} |" for name, sec in timings.items()]
    md += [f"| **total** | **{sum(timings.values()):.1f}** |", ""]
    return md
