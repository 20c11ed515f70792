"""The paper's comparison (base, direct fine-tune, sparse upcycling, CLIP-MoE by DMU) from one call."""

from __future__ import annotations

import json
import os

import torch
from accelerate import PartialState

from ..outputs import write_text_atomic
from .data import load_records
from .pipeline import run_baseline, run_dmu

RECALL_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")


def comparison_table(base_dir, data_path, out_dir, settings, eval_data, image_root=None, eval_image_root=None,
                     restart: bool = False, overwrite: bool = False) -> dict:
    """Train (or resume) DMU and both baselines with the same settings, then score every model on
    the held-out pairs (one caption per image) with the zero-shot retrieval of `clipmoe eval`.
    Writes out_dir/table.json and table.md; returns {"rows", "markdown"}. `restart` and `overwrite`
    apply to each run folder (see run_dmu)."""
    from ..outputs import check_output_dir

    check_output_dir(out_dir, "--out", overwrite, resumable=lambda p: bool({"dmu", "baselines", "table.json"} & set(os.listdir(p))))
    records, _ = load_records(eval_data, eval_image_root)  # checked before hours of training; scored by every model
    models = {"base (dense)": os.fspath(base_dir)}
    for kind, name in (("direct-ft", "direct fine-tune"), ("upcycling", "sparse upcycling")):
        models[name] = run_baseline(kind, base_dir, data_path, os.path.join(out_dir, "baselines"), settings, image_root, restart, overwrite)
    models["CLIP-MoE (DMU)"] = run_dmu(base_dir, data_path, os.path.join(out_dir, "dmu"), settings, image_root, restart, overwrite)
    rows = {}
    if PartialState().is_main_process:
        from ..zeroshot import evaluate_retrieval, load_encoder

        device = "cuda" if torch.cuda.is_available() else "cpu"
        images, captions = [r.image for r in records], [[r.caption] for r in records]
        rows = {name: evaluate_retrieval(load_encoder(path, device), images, captions) for name, path in models.items()}
        lines = ["| model | " + " | ".join(RECALL_KEYS) + " |", "|---" * (len(RECALL_KEYS) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(f"{r[c]:.1f}" for c in RECALL_KEYS) + " |" for name, r in rows.items()]
        markdown = "\n".join(lines) + "\n"
        write_text_atomic(os.path.join(out_dir, "table.json"), json.dumps({"models": models, "retrieval": rows}, indent=1))
        write_text_atomic(os.path.join(out_dir, "table.md"), markdown)
        return {"rows": rows, "markdown": markdown}
    return {"rows": rows, "markdown": ""}
