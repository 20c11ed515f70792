"""The paper's comparison (base, direct fine-tune, sparse upcycling, CLIP-MoE by DMU) from one call."""

from __future__ import annotations

import json
import os

import torch
from accelerate import PartialState

from .evaluate import retrieval_scores
from .pipeline import run_baseline, run_dmu


def comparison_table(base_dir, data_path, out_dir, settings, eval_data, image_root=None, eval_image_root=None) -> dict:
    """Train (or resume) DMU and both baselines with the same settings, then score every model on
    the held-out pairs. Writes out_dir/table.json and table.md; returns {"rows", "markdown"}."""
    models = {"base (dense)": os.fspath(base_dir)}
    models["direct fine-tune"] = run_baseline("direct-ft", base_dir, data_path, os.path.join(out_dir, "baselines"), settings, image_root)
    models["sparse upcycling"] = run_baseline("upcycling", base_dir, data_path, os.path.join(out_dir, "baselines"), settings, image_root)
    models["CLIP-MoE (DMU)"] = run_dmu(base_dir, data_path, os.path.join(out_dir, "dmu"), settings, image_root)
    rows = {}
    if PartialState().is_main_process:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        rows = {name: retrieval_scores(path, eval_data, eval_image_root, device) for name, path in models.items()}
        cols = list(next(iter(rows.values())))
        lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(f"{r[c]:.1f}" for c in cols) + " |" for name, r in rows.items()]
        markdown = "\n".join(lines) + "\n"
        with open(os.path.join(out_dir, "table.json"), "w") as f:
            json.dump({"models": models, "retrieval": rows}, f, indent=1)
        with open(os.path.join(out_dir, "table.md"), "w") as f:
            f.write(markdown)
        return {"rows": rows, "markdown": markdown}
    return {"rows": rows, "markdown": ""}
