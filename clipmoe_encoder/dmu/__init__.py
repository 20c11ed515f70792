"""Diversified Multiplet Upcycling: data, clustering, cluster-restricted contrastive training,
MoE assembly, router training, baselines, as one resumable pipeline (`clipmoe dmu ...`).

Names are imported lazily so that light users (the loss, the sampler) do not pull in sklearn
and accelerate.
"""

import importlib

_EXPORTS = {
    "Record": "data", "load_records": "data",
    "DMUSettings": "settings", "routing_statistics": "pipeline", "run_baseline": "pipeline", "run_dmu": "pipeline", "run_dmu_last_blocks": "pipeline",
    "train_contrastive": "trainer",
}
__all__ = ["DMUSettings", "Record", "load_records", "routing_statistics", "run_baseline", "run_dmu", "run_dmu_last_blocks", "train_contrastive"]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
