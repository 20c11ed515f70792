"""TextVQA val with the reference OCR tokens in the prompt (LLaVA-1.5's protocol): VQA soft accuracy."""

from ..prompts import SHORT_ANSWER
from ..scorers import textvqa
from .base import Benchmark, Row


def rows(m, paths):
    return [Row("accuracy (VQA soft, with OCR tokens in the prompt)", m["accuracy"])]


BENCHMARK = Benchmark(
    name="textvqa", scorer=textvqa, question_file="textvqa/llava_textvqa_val_v051_ocr.jsonl",
    image_folder="textvqa/train_images", files={"annotation_file": "textvqa/TextVQA_0.5.1_val.json"},
    prompt=SHORT_ANSWER, headline="TextVQA", headline_metric="accuracy", lmms_task="textvqa_val_ocr_local",
    rows=rows)
