"""Benchmark scorers: plain-Python reimplementations of the official protocols.

Each scorer module exposes ``score(...) -> dict`` (metrics plus the coverage counts of
``common.Answers.coverage``), ``add_arguments(parser)`` and ``from_args(args) -> dict`` for
``eval_mllm.score_cli``. Which scorer a benchmark uses is declared in eval_mllm.benchmarks.
"""

from .common import ScorerInputError

__all__ = ["ScorerInputError"]
