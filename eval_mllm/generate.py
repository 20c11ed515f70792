"""Answer generation: question file -> answer JSONL in LLaVA's model_vqa_loader format.

One line per answer, flushed as written, so an interrupted run loses at most the line being
written. A rerun resumes: answered ids are skipped, and a last line cut mid-write is removed
(the file is truncated back to the last complete line) before appending.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .errors import EvalInputError
from .questions import Question, get_chunk, load_image, record_key, shared_bases


@dataclass
class GenerateStats:
    n_questions: int = 0          # in this chunk
    n_resumed: int = 0            # already answered in the file
    n_generated: int = 0
    n_skipped_bad_image: int = 0
    n_truncated_removed: int = 0  # cut last line dropped before appending
    skipped: list = field(default_factory=list)  # "file: line N: why" of each skipped question


def _complete_record(raw: bytes) -> bool:
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(record, dict) and "question_id" in record and "text" in record


def repair_and_read(path) -> tuple[list[dict], int]:
    """Answer records of `path` (an answers JSONL we may append to).

    A last line without its newline is what a killed writer leaves (we write each line and its
    newline at once): it is cut off the file. Any other unreadable line is corruption: refuse."""
    if not os.path.exists(path):
        return [], 0
    with open(path, "rb") as f:
        data = f.read()
    end = data.rfind(b"\n") + 1
    n_cut = 0
    if end < len(data):
        if _complete_record(data[end:]):  # whole line, only its newline missing (another writer)
            with open(path, "ab") as f:
                f.write(b"\n")
            data, end = data + b"\n", len(data) + 1
        else:
            with open(path, "r+b") as f:
                f.truncate(end)
            n_cut = 1
    records = []
    for lineno, line in enumerate(data[:end].decode("utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise EvalInputError(f"{path}: line {lineno}: not valid JSON (corrupt answers file; "
                                 "only a cut last line is repaired)") from None
        if not isinstance(record, dict) or "question_id" not in record:
            raise EvalInputError(f"{path}: line {lineno}: not an answer record (no 'question_id')")
        records.append(record)
    return records, n_cut


def answer_record(question: Question, text: str, model_id: str) -> dict:
    import shortuuid

    record = {"question_id": question.question_id}
    if "round_id" in question.extra:  # model_vqa_mmbench's key order
        record["round_id"] = question.extra["round_id"]
    record.update(prompt=question.prompt, text=text)
    for name in ("options", "option_char"):
        if name in question.extra:
            record[name] = question.extra[name]
    record.update(answer_id=shortuuid.uuid(), model_id=model_id, metadata={})
    return record


def n_unanswered(questions, answers_file) -> int:
    """How many of `questions` have no answer in `answers_file` yet."""
    records, _ = repair_and_read(answers_file)
    shared = shared_bases(questions)
    done = {record_key(r, shared) for r in records}
    return sum(q.key not in done for q in questions)


def _batches(items, size):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def check_image_files(questions, image_folder):
    """Fail before loading a model when an image file is missing (decoding is checked later)."""
    for q in questions:
        if q.image is not None and not os.path.isfile(os.path.join(image_folder or "", q.image)):
            raise EvalInputError(f"{q.source}: image not found: {os.path.join(image_folder or '', q.image)}")


def generate(questions, model, answers_file, image_folder="", batch_size=1, num_chunks=1, chunk_idx=0,
             skip_bad_images=False, progress=True) -> GenerateStats:
    """Answer this chunk's unanswered questions into `answers_file` (appending)."""
    from tqdm import tqdm

    if batch_size < 1:
        raise EvalInputError("--batch-size must be at least 1")
    chunk = get_chunk(questions, num_chunks, chunk_idx)
    stats = GenerateStats(n_questions=len(chunk))
    folder = os.path.dirname(os.path.abspath(answers_file))
    os.makedirs(folder, exist_ok=True)
    done_records, stats.n_truncated_removed = repair_and_read(answers_file)
    shared = shared_bases(questions)
    done = {record_key(r, shared) for r in done_records}
    todo = [q for q in chunk if q.key not in done]
    stats.n_resumed = len(chunk) - len(todo)
    with open(answers_file, "a", encoding="utf-8") as out, \
            tqdm(total=len(todo), disable=not progress, desc=os.path.basename(answers_file), unit="q") as bar:
        for batch in _batches(todo, batch_size):
            items, kept = [], []
            for q in batch:
                try:
                    image = load_image(q, image_folder) if q.has_image else None
                except EvalInputError as exc:
                    if not skip_bad_images:
                        raise
                    stats.n_skipped_bad_image += 1
                    stats.skipped.append(str(exc))
                    bar.update(1)  # counted here; the batch's update below counts only the kept ones
                    continue
                items.append((image, q.text))
                kept.append(q)
            if not items:
                continue
            texts = model.answer(items)
            for q, text in zip(kept, texts, strict=True):
                # One write per line incl. its newline: a kill leaves at most one cut last line.
                out.write(json.dumps(answer_record(q, text, model.model_id), ensure_ascii=False) + "\n")
                out.flush()
                stats.n_generated += 1
            bar.update(len(kept))
    return stats


class _AllKeys:
    def __contains__(self, key):
        return True


def merge(out_path, part_paths, questions=None) -> int:
    """Concatenate chunk answer files into `out_path`; in question order when `questions` is
    given (else in the order of the parts, as LLaVA's `cat`). Duplicates keep the first answer;
    a cut last line of a part is dropped. Returns the number of answers written."""
    records = []
    for path in part_paths:
        if not os.path.isfile(path):
            raise EvalInputError(f"{path}: answer file not found")
        with open(path, "rb") as f:
            data = f.read()
        end = data.rfind(b"\n") + 1  # anything after the last newline is a cut line
        for lineno, line in enumerate(data[:end].decode("utf-8").split("\n"), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    raise EvalInputError(f"{path}: line {lineno}: not valid JSON") from None
    if questions is not None:
        shared = shared_bases(questions)
    else:  # without the questions, ids may be shared (MME): tell answers apart by prompt too
        shared = _AllKeys()
    by_key = {}
    for record in records:
        if not isinstance(record, dict) or "question_id" not in record:
            raise EvalInputError(f"{out_path}: a part holds a record without 'question_id'")
        by_key.setdefault(record_key(record, shared), record)
    if questions is not None:
        order = {q.key: i for i, q in enumerate(questions)}
        ordered = sorted(by_key.values(), key=lambda r: order.get(record_key(r, shared), len(order)))
    else:
        ordered = list(by_key.values())
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = out_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for record in ordered:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, out_path)
    return len(ordered)
