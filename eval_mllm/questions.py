"""Question-file readers: LLaVA's question JSONL, the ScienceQA JSON of LLaVA
(``llava_test_CQM-A.json``) and the MMBench TSV with base64 images.

Every reader returns a list of ``Question`` whose ``text`` is what goes after
``<image>\\n`` in the user turn and whose ``prompt`` is what LLaVA's eval script
writes into the answer's ``prompt`` field, so our answer files are line-for-line
what ``model_vqa_loader`` / ``model_vqa_science`` / ``model_vqa_mmbench`` write.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field

from .errors import EvalInputError
from .prompts import MULTIPLE_CHOICE, MULTIPLE_CHOICE_CN
from .scorers.common import ScorerInputError, not_utf8_error, read_table
from .scorers.mmbench import absent, options_of

MMBENCH_LETTERS = "ABCD"  # model_vqa_mmbench.py only asks A-D


@dataclass
class Question:
    question_id: object          # as in the file (int or str); written back unchanged
    text: str                    # user text, without the <image> token
    prompt: str                  # the answer record's "prompt" field
    source: str                  # "file: line N", for error messages
    image: str | None = None     # file name relative to the image folder
    image_b64: str | None = None  # MMBench: the image itself
    extra: dict = field(default_factory=dict)  # extra answer fields (MMBench round_id, options)
    shared_id: bool = False      # another question has the same id (LLaVA's MME: id = image path)

    @property
    def has_image(self) -> bool:
        return self.image is not None or self.image_b64 is not None

    @property
    def base_key(self) -> str:
        return answer_key(self.question_id, self.extra.get("round_id"))

    @property
    def key(self) -> str:
        """Identity of one answer: the question id (+ MMBench round); where several questions
        share an id (MME asks two questions per image under the image's path), also the prompt."""
        return self.base_key + ("\n" + self.prompt if self.shared_id else "")


def record_key(record, shared_bases) -> str:
    """The `Question.key` of an answer record; `shared_bases` = base keys used by several questions."""
    base = answer_key(record["question_id"], record.get("round_id"))
    return base + "\n" + str(record.get("prompt", "")) if base in shared_bases else base


def shared_bases(questions) -> set:
    return {q.base_key for q in questions if q.shared_id}


def _mark_shared_ids(questions):
    counts = Counter(q.base_key for q in questions)
    for q in questions:
        q.shared_id = counts[q.base_key] > 1
    return questions


def answer_key(question_id, round_id=None) -> str:
    """Ids compare as strings (LLaVA writes some as int, some as str); float 3.0 is 3."""
    if isinstance(question_id, float) and question_id.is_integer():
        question_id = int(question_id)
    key = str(question_id).strip()
    return key if not round_id else f"{key}#round{round_id}"


def _open(path):
    if not os.path.exists(path):
        raise EvalInputError(f"{path}: question file not found")
    if os.path.isdir(path):
        raise EvalInputError(f"{path}: is a directory, expected a question file")
    return open(path, encoding="utf-8-sig")


def _read_text(path) -> str:
    """The whole question file; one that is not UTF-8 is an error naming its first bad line."""
    with _open(path) as f:
        try:
            return f.read()
        except UnicodeDecodeError:
            raise EvalInputError(str(not_utf8_error(path))) from None


def read_llava_jsonl(path) -> list[Question]:
    """``{"question_id", "image"?, "text", ...}`` per line (model_vqa_loader's input)."""
    questions = []
    for lineno, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}: line {lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalInputError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise EvalInputError(f"{where}: expected a JSON object")
        for name in ("question_id", "text"):
            if name not in rec:
                raise EvalInputError(f"{where}: missing field '{name}'")
        if not isinstance(rec["text"], str):
            raise EvalInputError(f"{where}: field 'text' must be a string")
        image = rec.get("image")
        if image is not None and not isinstance(image, str):
            raise EvalInputError(f"{where}: field 'image' must be a string")
        questions.append(Question(rec["question_id"], rec["text"], rec["text"], where, image=image))
    return questions


def read_scienceqa(path, single_pred_prompt=True) -> list[Question]:
    """LLaVA's ScienceQA file: a JSON list of ``{"id", "image"?, "conversations": [...]}``.

    As model_vqa_science: the first (human) turn without ``<image>``; the prompt
    field gets ``<image>\\n`` when the problem has an image."""
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise EvalInputError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise EvalInputError(f"{path}: expected a JSON list of problems")
    questions = []
    for i, rec in enumerate(data):
        where = f"{path}: entry {i}"
        if not isinstance(rec, dict) or "id" not in rec:
            raise EvalInputError(f"{where}: missing field 'id'")
        turns = rec.get("conversations")
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], dict) \
                or not isinstance(turns[0].get("value"), str):
            raise EvalInputError(f"{where}: missing field 'conversations[0].value'")
        text = turns[0]["value"].replace("<image>", "").strip()
        prompt = ("<image>\n" + text) if "image" in rec else text
        if single_pred_prompt:
            text += "\n" + MULTIPLE_CHOICE
            prompt += "\n" + MULTIPLE_CHOICE
        questions.append(Question(rec["id"], text, prompt, where, image=rec.get("image")))
    return questions


def _mmbench_id(value: str):
    # pandas gives an int for an integer index column; keep that so ids match LLaVA's files.
    return int(value) if value.strip().lstrip("-").isdigit() else value


def read_mmbench(path, all_rounds=False, single_pred_prompt=True, lang="en") -> list[Question]:
    """MMBench TSV (index, question, hint, A-D, answer?, category, image=base64).

    Prompt as model_vqa_mmbench: hint + "\\n" + question + "\\nA. ..." lines; with
    ``all_rounds`` one question per option rotation (options rotated left by one per round)."""
    _open(path).close()  # a missing file: the same "question file not found" as the other formats
    try:
        rows = read_table(path, ("index", "question", "A", "image"))
    except ScorerInputError as exc:  # the question readers raise EvalInputError
        raise EvalInputError(str(exc)) from None
    questions = []
    for lineno, row in enumerate(rows, 2):
        where = f"{path}: line {lineno}"
        options = options_of(row, MMBENCH_LETTERS)
        if not options:
            raise EvalInputError(f"{where}: no options (column 'A' empty)")
        if absent(row.get("image")):
            raise EvalInputError(f"{where}: empty 'image' column")
        for round_id in range(len(options) if all_rounds else 1):
            shown = options[round_id:] + options[:round_id]
            text = row["question"] if absent(row.get("hint")) else row["hint"] + "\n" + row["question"]
            for letter, option in zip(MMBENCH_LETTERS, shown):
                text += "\n" + letter + ". " + option
            prompt = text  # model_vqa_mmbench's cur_prompt: before the instruction
            if single_pred_prompt:
                text += "\n" + (MULTIPLE_CHOICE_CN if lang == "cn" else MULTIPLE_CHOICE)
            letters = list(MMBENCH_LETTERS[:len(options)])
            # As model_vqa_mmbench: option_char holds the original letters, rotated like the options.
            extra = {"round_id": round_id, "options": shown, "option_char": letters[round_id:] + letters[:round_id]}
            questions.append(Question(_mmbench_id(row["index"]), text, prompt, where,
                                      image_b64=row["image"], extra=extra))
    return questions


def detect_format(path) -> str:
    ext = os.path.splitext(path)[1].lower()
    return {".tsv": "mmbench", ".json": "scienceqa"}.get(ext, "jsonl")


def read_questions(path, fmt=None, all_rounds=False, single_pred_prompt=None, lang="en") -> list[Question]:
    """Read any supported question file (format from the extension unless ``fmt``)."""
    fmt = fmt or detect_format(path)
    single = True if single_pred_prompt is None else single_pred_prompt
    if fmt == "jsonl":
        questions = read_llava_jsonl(path)
    elif fmt == "scienceqa":
        questions = read_scienceqa(path, single)
    elif fmt == "mmbench":
        questions = read_mmbench(path, all_rounds, single, lang)
    else:
        raise EvalInputError(f"{path}: unknown question format {fmt!r}")
    return _mark_shared_ids(questions)


def load_image(question: Question, image_folder: str):
    """The question's image as RGB PIL image; EvalInputError naming file and line if unreadable."""
    from clipmoe_encoder.images import DECODE_ERRORS, decode_rgb

    if question.image_b64 is not None:
        try:
            return decode_rgb(io.BytesIO(base64.b64decode(question.image_b64, validate=False)))
        except (binascii.Error, *DECODE_ERRORS) as exc:
            raise EvalInputError(f"{question.source}: image cannot be decoded ({exc})") from None
    path = os.path.join(image_folder or "", question.image)
    if not os.path.isfile(path):
        raise EvalInputError(f"{question.source}: image not found: {path}")
    try:
        return decode_rgb(path)
    except DECODE_ERRORS as exc:
        raise EvalInputError(f"{question.source}: image cannot be decoded: {path} ({exc})") from None


def split_list(items, n):
    """LLaVA's split_list: chunks of ceil(len/n) items (the last ones may be short or absent)."""
    size = math.ceil(len(items) / n) if items else 1
    return [items[i:i + size] for i in range(0, len(items), size)]


def get_chunk(items, n, k):
    if not 0 <= k < n:
        raise EvalInputError(f"--chunk-idx {k} is not in [0, {n})")
    chunks = split_list(items, n)
    return chunks[k] if k < len(chunks) else []
