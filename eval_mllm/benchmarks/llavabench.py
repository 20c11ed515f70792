"""LLaVA-Bench (in the wild): answers JSONL for LLaVA's GPT review script (score only)."""

from ..scorers import judged
from .base import Benchmark

BENCHMARK = Benchmark(name="llavabench", scorer=judged.llavabench, headline="LLaVA-Bench")
