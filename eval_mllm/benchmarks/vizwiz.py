"""VizWiz test-dev: answered here, scored by the evaluation server (submission file)."""

from ..prompts import SHORT_ANSWER
from ..scorers import vizwiz
from .base import Benchmark, submission_rows

SUBMISSION = "vizwiz_submission.json"

BENCHMARK = Benchmark(
    name="vizwiz", scorer=vizwiz, question_file="vizwiz/llava_test.jsonl", image_folder="vizwiz/test",
    prompt=SHORT_ANSWER, headline="VizWiz", submission=SUBMISSION,
    rows=submission_rows("test-dev: submit to the evaluation server", SUBMISSION))
