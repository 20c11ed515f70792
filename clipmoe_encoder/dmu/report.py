"""report.json (everything, machine-readable) and report.md (the same for people) of a run."""

from __future__ import annotations

import dataclasses
import json
import os


def write_report(run_dir, pipeline, settings, data_report, stages, clusters, timings, routing) -> dict:
    report = {
        "pipeline": pipeline,
        "settings": dataclasses.asdict(settings),
        "data": data_report,
        "clusters": clusters,
        "stages": stages,
        "timings_s": {**timings, **{f"train_{k}": v.get("seconds") for k, v in stages.items() if v}},
        "routing": routing,
    }
    tmp = os.path.join(run_dir, "report.json.tmp")
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, os.path.join(run_dir, "report.json"))
    tmp = os.path.join(run_dir, "report.md.tmp")
    with open(tmp, "w") as f:
        f.write(render_markdown(report))
    os.replace(tmp, os.path.join(run_dir, "report.md"))
    return report


def _fmt(x, digits=4):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def render_markdown(report: dict) -> str:
    lines = [f"# {report['pipeline']} run report", "", "## Settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in report["settings"].items()]
    d = report["data"]
    lines += ["", "## Data", "", ", ".join(f"{k}: {v}" for k, v in d.items())]
    if report["clusters"]:
        lines += ["", "## Clusters (accumulated labels used by the next MCL stage)", "",
                  "| after clustering | non-empty clusters | largest | smallest | unlabelled |", "|---|---|---|---|---|"]
        for k, c in report["clusters"].items():
            lines.append(f"| {k} | {c['nonempty_clusters']} | {c['largest']} | {c['smallest']} | {c['unlabelled']} |")
    lines += ["", "## Stages", "",
              "| stage | steps | final loss | trainable params | clusters | clusters < batch | cluster batches | mixed batches | dropped samples | bad images | seconds |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in report["stages"].items():
        if not s:
            continue
        sm = s.get("sampler", {})
        lines.append(f"| {name} | {s['steps']} | {_fmt(s.get('final_loss'))} | {s.get('trainable_parameters')} | {sm.get('clusters')} | "
                     f"{sm.get('clusters_smaller_than_batch')} | {sm.get('cluster_batches')} | {sm.get('mixed_batches')} | "
                     f"{sm.get('dropped_samples')} | {s.get('invalid_samples')} | {_fmt(s.get('seconds'), 3)} |")
    if report["timings_s"]:
        lines += ["", "## Time per step of the pipeline (s)", ""]
        lines += [f"- {k}: {_fmt(v, 3)}" for k, v in report["timings_s"].items()]
    routing = report.get("routing")
    if routing:
        lines += ["", f"## Routing ({routing['samples']} samples, {routing['num_experts']} experts, top-{routing['top_k']})", ""]
        for tower in ("vision", "text"):
            r = routing.get(tower)
            if not r:
                continue
            lines += [f"### {tower} tower (entropy in nats, max {r['max_entropy']:.3f})", "",
                      "| layer | entropy | load per expert | 1st choice per expert |", "|---|---|---|---|"]
            for i, layer in enumerate(r["layers"]):
                load = " ".join(f"{x:.2f}" for x in r["load"][i])
                first = " ".join(f"{x:.2f}" for x in r["first_choice"][i])
                lines.append(f"| {layer} | {r['entropy'][i]:.3f} | {load} | {first} |")
            lines.append("")
    return "\n".join(lines) + "\n"
