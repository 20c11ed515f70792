"""The report sections on DMU's mechanism (cluster purity, routing by attribute, each expert alone)
and on cost (FLOPs, forward time), rendered only from the run's JSON (summary["mechanism"],
summary["cost"]), with their figures."""

from __future__ import annotations

import os

import numpy as np

from ..plotting import pyplot
from .mechanism import ATTRIBUTES

CLUSTER_KINDS = (("image", "image k-means"), ("text", "text k-means"), ("accumulated", "accumulated cluster (MCL's batches)"))


def _f(v, digits=2) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and v == v else "–"


def purity_table(purity: list[dict]) -> list[str]:
    head = "| stage (trains) | clusters | " + " | ".join(f"{a} NMI / purity (floor)" for a in ATTRIBUTES) + " |"
    md = [head, "|---|---|" + "---:|" * len(ATTRIBUTES)]
    for stage in purity:
        for kind, label in CLUSTER_KINDS:
            cells = [f"{_f(stage[kind][a]['nmi'])} / {_f(stage[kind][a]['purity'])} ({_f(stage[kind][a]['majority_floor'])})"
                     for a in ATTRIBUTES]
            md.append(f"| {stage['stage']} ({stage['trains']}): {label} | {stage['clusters'] if kind == 'accumulated' else ''} | "
                      + " | ".join(cells) + " |")
    return md


def plot_purity(purity: list[dict], path: str) -> str | None:
    if not purity:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(CLUSTER_KINDS), figsize=(4.0 * len(CLUSTER_KINDS), 3.0), squeeze=False)
    width = 0.8 / len(purity)
    for ax, (kind, label) in zip(axes[0], CLUSTER_KINDS):
        for i, stage in enumerate(purity):
            ax.bar(np.arange(len(ATTRIBUTES)) + i * width, [stage[kind][a]["nmi"] for a in ATTRIBUTES], width,
                   label=f"stage {stage['stage']} (→ {stage['trains']})")
        ax.set_xticks(np.arange(len(ATTRIBUTES)) + 0.4 - width / 2, ATTRIBUTES, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(label, fontsize=9)
        ax.set_ylabel("NMI with the attribute", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("which attribute each clustering stage splits (training scenes)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def routing_table_md(routing: dict, tower: str, layer: int) -> list[str]:
    E = routing["num_experts"]
    md = [f"| {tower} tokens of (layer {routing['layers'][tower][layer]}) | tokens | " + " | ".join(f"E{j}" for j in range(E)) + " |",
          "|---|---:|" + "---:|" * E]
    for attribute, per_layer in routing[tower].items():
        for value, row in per_layer[layer].items():
            md.append(f"| {attribute}: {value} | {row['tokens']} | " + " | ".join(_f(x) for x in row["share"]) + " |")
    return md


def plot_routing_by_attribute(routing: dict, path: str) -> str | None:
    panels = [(tower, attr, layer) for tower in ("vision", "text") for attr in routing.get(tower, {})
              for layer in range(len(routing[tower][attr]))]
    if not panels:
        return None
    plt = pyplot()
    cols = max(len(routing["layers"]["vision"]), len(routing["layers"]["text"]))
    rows = len({(t, a) for t, a, _ in panels})
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 0.45 * 8 * rows), squeeze=False)
    row_of = {key: i for i, key in enumerate(dict.fromkeys((t, a) for t, a, _ in panels))}
    for ax in axes.flat:
        ax.axis("off")
    for tower, attr, layer in panels:
        table = routing[tower][attr][layer]
        if not table:
            continue
        ax = axes[row_of[(tower, attr)]][layer]
        ax.axis("on")
        m = np.array([row["share"] for row in table.values()])
        ax.imshow(m, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v < 0.6 else "black")
        ax.set_xticks(range(m.shape[1]), [f"E{j}" for j in range(m.shape[1])], fontsize=7)
        ax.set_yticks(range(m.shape[0]), list(table), fontsize=7)
        ax.set_title(f"{tower} layer {routing['layers'][tower][layer]}: {attr}", fontsize=8)
    fig.suptitle("CLIP-MoE: share of each attribute value's tokens routed first to each expert (held-out)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def mechanism_markdown(summary: dict, figures: dict, results_table) -> list[str]:
    mech = summary.get("mechanism")
    if not mech:
        return []
    md = ["## DMU's mechanism on this world", ""]
    md += [("Cluster purity: for each clustering stage of the DMU run (stage s's clusters are the batches MCL "
            "stage s+1 trains on), the normalised mutual information between the cluster labels and each attribute "
            "of the training scenes' main group (0 = unrelated, 1 = the clusters are the attribute's values), then "
            "majority purity (share of samples whose value is their cluster's commonest) and, in brackets, its floor "
            "(the commonest value's share overall). An attribute the accumulated clusters split (high NMI) is constant "
            "inside MCL's batches, so the stage cannot use it to tell captions apart and must learn the others."), ""]
    md += purity_table(mech["cluster_purity"]) + [""]
    routing = mech["routing_by_attribute"]
    md += [(f"Routing by attribute ({routing['samples']} held-out scenes): share of the tokens of each attribute value "
            "whose first choice is each expert. Vision tokens are the patches that show exactly one object (labelled "
            "with its shape / colour; patches touching no object are background, patches touching two are left out); "
            "text tokens are the caption's colour and shape words. Last MoE layer of each tower:"), ""]
    for tower in ("vision", "text"):
        if routing.get(tower):
            md += routing_table_md(routing, tower, len(routing["layers"][tower]) - 1) + [""]
    md += [("Each expert alone as a dense CLIP (the paper's Table 1 on this world): expert j of every MoE block "
            "of the CLIP-MoE, router dropped (`clipmoe extract-expert`); expert 0 is the base's FFN, expert j >= 1 "
            "the FFN of MCL stage j, after the router stage. Models of training seed " + str(mech.get("seed", "")).replace("seed", "") + "."), ""]
    seed0 = (summary.get("results_by_seed") or {}).get(mech.get("seed"), summary["results"])
    rows = {"base": seed0["base"], **mech["expert_results"], "clip-moe": seed0["clip-moe"]}
    md += [results_table(rows, summary["chance"]), ""]
    return md


def seeds_markdown(summary: dict) -> list[str]:
    """CLIP-MoE against each other model per metric over the seeds, with the verdict of the rule."""
    from .report import MODEL_LABELS
    from .seeds import SPREAD_RULE

    rows = summary.get("comparisons")
    if not rows:
        return []
    md = ["## CLIP-MoE against the other models over the seeds", ""]
    md += [(f"Per metric: mean ± std of each model over {rows[0]['seeds']} seeds, the difference of the means, Welch's t, "
            f"and whether the difference exceeds the seed spread by the rule {SPREAD_RULE}."), ""]
    md += ["| CLIP-MoE vs | metric | CLIP-MoE | other | difference | Welch t | exceeds the seed spread |",
           "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        verdict = ("**yes, CLIP-MoE higher**" if r["diff"] > 0 else "**yes, CLIP-MoE lower**") if r["exceeds_spread"] else "no"
        md.append(f"| {MODEL_LABELS.get(r['b'], r['b'])} | {r['metric']} | {r['mean_a']:.1f} ± {r['std_a']:.1f} | "
                  f"{r['mean_b']:.1f} ± {r['std_b']:.1f} | {r['diff']:+.1f} | {r['welch_t']:+.2f} | {verdict} |")
    return md + [""]


def ordering_markdown(summary: dict) -> list[str]:
    """Per classified attribute: how much the first clustering splits it (an attribute it splits is
    constant in MCL's batches; the others are what MCL's stages must learn), the dense base's score,
    and CLIP-MoE against both baselines with the seed-spread verdicts: the paper's ordering, attribute
    by attribute."""
    mech, rows = summary.get("mechanism"), summary.get("comparisons")
    if not mech or not rows or not mech.get("cluster_purity"):
        return []
    first = mech["cluster_purity"][0]["accumulated"]
    results, std = summary["results"], summary.get("results_std") or {}
    verdict = {(r["b"], r["metric"]): r for r in rows}

    def cell(model, metric):
        return f"{results[model][metric]:.1f} ± {std.get(model, {}).get(metric, 0.0):.1f}"

    def against(other, metric):
        r = verdict.get((other, metric))
        if r is None:
            return "–"
        return f"{r['diff']:+.1f} ({'exceeds' if r['exceeds_spread'] else 'within'} the spread)"

    md = ["## Does CLIP-MoE beat the baselines where MCL should help?", ""]
    md += [("Per attribute: the NMI of the first stage's accumulated clusters with it (high: MCL's batches hold one "
            "value, so MCL cannot learn it there; low: what the cluster-restricted batches leave to tell captions "
            "apart), then top-1 mean ± std over the seeds and CLIP-MoE's difference to each baseline."), ""]
    md += ["| attribute | NMI, stage-0 clusters | dense base | direct fine-tune | sparse upcycling | CLIP-MoE | vs direct fine-tune | vs sparse upcycling |",
           "|---|---:|---:|---:|---:|---:|---|---|"]
    for attribute in ("shape", "colour", "count", "size"):
        metric = f"{attribute}_top1"
        if metric not in results.get("clip-moe", {}):
            continue
        md.append(f"| {attribute} | {first[attribute]['nmi']:.2f} | " + " | ".join(cell(m, metric) for m in ("base", "direct-ft", "upcycling", "clip-moe"))
                  + f" | {against('direct-ft', metric)} | {against('upcycling', metric)} |")
    return md + [""]


def cost_markdown(summary: dict) -> list[str]:
    cost = summary.get("cost")
    if not cost:
        return []
    base_flops = cost["base"]["flops"]["total"]
    any_model = next(iter(cost.values()))
    md = ["## Quality against cost", ""]
    md += [(f"Image tower + projection per image. FLOPs counted from each config (2 per multiply-add of every matrix "
            f"product; a CLIP-MoE block runs top-k experts per token plus its router). Forward time: median of "
            f"{any_model['repeats']} forwards of a batch of {any_model['batch']} held-out images, the models taking turns "
            f"in one process, relative to the dense base (the checkpoints of the first seed). The scores are the zero-shot "
            "table's means over the seeds."), ""]
    md += ["| model | MFLOPs / image | × base FLOPs | forward ms (batch) | × base time | I→T R@1 | shape top-1 | colour top-1 | count top-1 |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    from .report import MODEL_LABELS

    for name, c in cost.items():
        r = summary["results"].get(name, {})
        md.append(f"| {MODEL_LABELS.get(name, name)} | {c['flops']['total'] / 1e6:.2f} | {c['flops']['total'] / base_flops:.2f} | "
                  f"{1000 * c['median_s']:.1f} | {c['relative']:.2f} | " +
                  " | ".join(_f(r.get(k), 1) for k in ("i2t_r1", "shape_top1", "colour_top1", "count_top1")) + " |")
    return md + [""]


def mechanism_figures(summary: dict, out_dir: str) -> dict:
    mech = summary.get("mechanism")
    if not mech:
        return {}
    return {"cluster_purity": plot_purity(mech["cluster_purity"], os.path.join(out_dir, "cluster_purity.png")),
            "routing_by_attribute": plot_routing_by_attribute(mech["routing_by_attribute"],
                                                              os.path.join(out_dir, "routing_by_attribute.png"))}
