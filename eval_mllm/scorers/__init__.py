"""Benchmark scorers: plain-Python reimplementations of the official protocols.

Each entry of ``SCORERS`` exposes ``score(...) -> dict`` (metrics plus the
coverage counts of ``common.Answers.coverage``), ``add_arguments(parser)``
and ``from_args(args) -> dict`` for ``eval_mllm.score_cli``.
"""

from . import (
    gqa,
    judged,
    mmbench,
    mme,
    mmstar,
    ocrbench,
    pope,
    scienceqa,
    textvqa,
    vizwiz,
    vqav2,
)
from .common import ScorerInputError

SCORERS = {
    "pope": pope,
    "mme": mme,
    "textvqa": textvqa,
    "vqav2": vqav2,
    "vizwiz": vizwiz,
    "gqa": gqa,
    "scienceqa": scienceqa,
    "mmbench": mmbench,
    "mmstar": mmstar,
    "ocrbench": ocrbench,
    "mmvet": judged.mmvet,
    "llavabench": judged.llavabench,
}

__all__ = ["SCORERS", "ScorerInputError"]
