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
from .scorers.common import ScorerInputError, read_jsonl, write_atomic

# What resume and merge need of an answer line (a scorer also needs 'text' to be a string).
RESUME_FIELDS = {"question_id": (int, str), "text": str}


@dataclass
class GenerateStats:
    n_questions: int = 0          # in this chunk
    n_resumed: int = 0            # already answered in the file
    n_generated: int = 0
    n_skipped_bad_image: int = 0
    n_truncated_removed: int = 0  # cut last line dropped before appending
    skipped: list = field(default_factory=list)  # "file: line N: why" of each skipped question


def _read(path, fields):
    """Answer records of `path` through the scorers' reader (one rule for every reader: a last
    line without its newline is kept when it is complete JSON, dropped when it is cut)."""
    try:
        return read_jsonl(path, fields)
    except ScorerInputError as exc:
        raise EvalInputError(str(exc)) from None


def repair_and_read(path) -> tuple[list[dict], int]:
    """Answer records of `path` (an answers JSONL we may append to), and whether a cut last
    line was removed.

    A cut last line (not valid JSON) is what a killed writer leaves: it is cut off the file
    before appending. A complete last line without its newline gets its newline."""
    if not os.path.exists(path):
        return [], 0
    records, n_cut, _ = _read(path, RESUME_FIELDS)
    with open(path, "rb") as f:
        data = f.read()
    body = data.rstrip()
    if n_cut:  # the cut line is the last non-blank one: keep everything before its start
        with open(path, "r+b") as f:
            f.truncate(body.rfind(b"\n") + 1)
    elif body and not data.endswith(b"\n"):
        with open(path, "ab") as f:
            f.write(b"\n")
    return records, n_cut


def check_resumable(path, questions, overwrite=False):
    """Refuse to append to a file that is not this command's own resumable output (another
    benchmark's answers, or not an answers file at all) unless `overwrite`; with `overwrite`
    such a file is moved aside to `path`.bak-N (never deleted) and generation starts fresh."""
    if not os.path.exists(path):
        return
    if os.path.isdir(path):
        raise EvalInputError(f"--answers-file {path}: is a directory; give a file path")
    why = None
    try:
        records, _, _ = read_jsonl(path, RESUME_FIELDS)
    except ScorerInputError as exc:
        why = f"not an answers file this command can resume ({exc})"
    else:
        shared = shared_bases(questions)
        keys = {q.key for q in questions}
        if records and not any(record_key(r, shared) in keys for r in records):
            why = (f"none of its {len(records)} answer(s) is for a question of this question file "
                   "(another benchmark's answers?)")
    if why is None:
        return
    if not overwrite:
        raise EvalInputError(f"--answers-file {path}: {why}; pass --overwrite to set it aside "
                             "and start afresh, or choose another --answers-file")
    n = 0
    while os.path.exists(f"{path}.bak-{n}"):
        n += 1
    os.replace(path, f"{path}.bak-{n}")


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


@dataclass
class MergeStats:
    n_read: int = 0               # answer lines read from all parts
    n_written: int = 0
    dropped: dict = field(default_factory=dict)   # reason -> count of lines read but not written


def merge(out_path, part_paths, questions=None, overwrite=False) -> MergeStats:
    """Concatenate chunk answer files into `out_path`; in question order when `questions` is
    given (else in the order of the parts, as LLaVA's `cat`). A duplicate keeps the last answer (at
    the first one's place), as the scorers and LLaVA's conversion scripts read ids;
    a cut last line of a part is dropped; every dropped line is counted by reason. An existing
    `out_path` is replaced only with `overwrite` (or when the merge would write it unchanged);
    the output is written to a temporary file and renamed."""
    out_abs = os.path.abspath(out_path)
    if os.path.isdir(out_path):
        raise EvalInputError(f"merge OUT {out_path}: is a directory; give a file path")
    for path in part_paths:
        if not os.path.exists(path):
            raise EvalInputError(f"{path}: answer file not found")
        if os.path.abspath(path) == out_abs:
            raise EvalInputError(f"merge OUT {out_path}: is also one of the parts; "
                                 "write the merge to another file")
    stats = MergeStats()
    records = []
    for path in part_paths:
        part, n_cut, _ = _read(path, RESUME_FIELDS)
        records += part
        stats.n_read += len(part) + n_cut
        if n_cut:
            stats.dropped["truncated_last_line"] = stats.dropped.get("truncated_last_line", 0) + n_cut
    if questions is not None:
        shared = shared_bases(questions)
    else:  # without the questions, ids may be shared (MME): tell answers apart by prompt too
        shared = _AllKeys()
    by_key = {}
    for record in records:
        by_key[record_key(record, shared)] = record  # the last answer wins, where the first stood
    n_dup = len(records) - len(by_key)
    if n_dup:
        stats.dropped["duplicate_answer"] = n_dup
    if questions is not None:
        order = {q.key: i for i, q in enumerate(questions)}
        ordered = sorted(by_key.values(), key=lambda r: order.get(record_key(r, shared), len(order)))
    else:
        ordered = list(by_key.values())
    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in ordered)
    if os.path.exists(out_path) and not overwrite and not _same_content(out_path, text):
        raise EvalInputError(f"merge OUT {out_path}: exists and holds other content; pass "
                             "--overwrite to replace it, or choose another OUT")
    try:
        write_atomic(out_path, lambda f: f.write(text), "merge OUT")
    except ScorerInputError as exc:
        raise EvalInputError(str(exc)) from None
    stats.n_written = len(ordered)
    return stats


def _same_content(path, text):
    try:
        with open(path, "rb") as f:
            return f.read() == text.encode("utf-8")
    except OSError:
        return False
