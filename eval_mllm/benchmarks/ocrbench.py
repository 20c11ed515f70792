"""OCRBench: substring match, score out of 1000 (score only: `eval-mllm score ocrbench`)."""

from ..scorers import ocrbench
from .base import Benchmark

BENCHMARK = Benchmark(name="ocrbench", scorer=ocrbench, headline="OCRBench", headline_metric="score")
