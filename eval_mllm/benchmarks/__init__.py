"""The benchmark registry: one module per benchmark declares a `Benchmark` (base.py); `run`,
`score`, the report, the lmms-eval tasks and the demo read it from here.

Adding a benchmark: write `<name>.py` with its scorer and `BENCHMARK = Benchmark(...)`, and add
the module name below (docs/eval.md).
"""

from __future__ import annotations

import importlib

from .base import Benchmark, Paths, Row

# Order: the report's column order.
_MODULES = ("pope", "mme", "textvqa", "gqa", "scienceqa", "mmbench", "vqav2", "vizwiz", "mmvet",
            "mmstar", "ocrbench", "llavabench")

REGISTRY: dict[str, Benchmark] = {
    m.BENCHMARK.name: m.BENCHMARK for m in (importlib.import_module(f".{n}", __name__) for n in _MODULES)}


def runnable() -> dict[str, Benchmark]:
    """The benchmarks `run` can generate answers for (those with a question file)."""
    return {name: b for name, b in REGISTRY.items() if b.question_file}


def get(name: str) -> Benchmark:
    from ..errors import EvalInputError

    key = name.strip().lower().replace("-", "")
    if key not in REGISTRY:
        raise EvalInputError(f"unknown benchmark {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[key]


__all__ = ["REGISTRY", "Benchmark", "Paths", "Row", "get", "runnable"]
