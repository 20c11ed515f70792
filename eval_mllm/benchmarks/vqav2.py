"""VQAv2 test-dev: answered here, scored by the evaluation server (submission file)."""

from ..prompts import SHORT_ANSWER
from ..scorers import vqav2
from .base import Benchmark, submission_rows

SUBMISSION = "vqav2_submission.json"

BENCHMARK = Benchmark(
    name="vqav2", scorer=vqav2, question_file="vqav2/llava_vqav2_mscoco_test-dev2015.jsonl",
    image_folder="vqav2/test2015", prompt=SHORT_ANSWER, headline="VQAv2", submission=SUBMISSION,
    rows=submission_rows("test-dev: submit to the evaluation server", SUBMISSION))
