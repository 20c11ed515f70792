"""MMStar: multiple choice A-D (score only: `eval-mllm score mmstar`)."""

from ..scorers import mmstar
from .base import Benchmark

BENCHMARK = Benchmark(name="mmstar", scorer=mmstar, headline="MMStar", headline_metric="accuracy")
