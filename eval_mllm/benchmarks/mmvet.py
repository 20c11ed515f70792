"""MM-Vet: long answers (LLaVA's 1024-token budget), graded by GPT-4 from the grader file."""

from ..scorers import judged
from .base import Benchmark, submission_rows

SUBMISSION = "mmvet_submission.json"

BENCHMARK = Benchmark(
    name="mmvet", scorer=judged.mmvet, question_file="mm-vet/llava-mm-vet.jsonl", image_folder="mm-vet/images",
    max_new_tokens=1024, headline="MM-Vet", submission=SUBMISSION,
    rows=submission_rows("needs the MM-Vet GPT-4 grader", SUBMISSION))
