"""Shared helpers for the benchmark scorers (standard library only).

Conventions used by every scorer:

* Answers are matched to questions by ``question_id`` (never by position).
  Ids are compared as strings (``qid_key``) so that ``1`` and ``"1"`` match:
  LLaVA writes some ids as ints and others as strings.  An id answered twice
  keeps its last answer, as LLaVA's scripts do (the earlier one is counted).
* Accuracies are percentages (0-100).  MME reports its own score scale and
  OCRBench reports counts, as their official tools do.
* Every result dict carries the coverage counts ``n_questions``,
  ``n_scored``, ``n_missing``, ``n_duplicates``, ``n_unknown`` and
  ``n_truncated_lines``, a ``dropped`` dict ``{reason: count}`` of every
  answer line that was read but not scored, and a ``warnings`` list.
* Nothing scorable (an empty answers file, or no answer with an id of the
  question set) is an error, never a result of ``null`` scores.
* One reader for answer files (``read_jsonl``), shared with ``generate``'s
  resume and ``merge``: a last line without its newline is kept when it is
  complete JSON, and dropped (counted) when it is not (a cut write).
* Bad input raises ``ScorerInputError`` with one line naming the file, the
  place in it and the field; the CLI prints it and exits with status 2.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import re
import sys
import tempfile

# Answer lines written by LLaVA's model_vqa_loader.py / our generator.
ANSWER_FIELDS = {"question_id": (int, str), "text": str}


class ScorerInputError(ValueError):
    """A missing file, an unreadable file, or a record with a missing/bad field."""


def qid_key(value) -> str:
    """Canonical form of a question id, used for every id comparison."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def pct(num, den):
    """``num/den`` in percent, or None when there is nothing to divide by."""
    return None if den == 0 else 100.0 * num / den


def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


# ----------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------


def _open_text(path):
    if not os.path.exists(path):
        raise ScorerInputError(f"{path}: file not found")
    if os.path.isdir(path):
        raise ScorerInputError(f"{path}: is a directory, expected a file")
    try:
        # utf-8-sig: also read files saved with a byte-order mark.
        return open(path, encoding="utf-8-sig")
    except OSError as exc:
        raise ScorerInputError(f"{path}: cannot open ({exc.strerror})") from None


def _type_name(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in types)


def check_fields(record, fields, path, where):
    """Check ``record`` (a dict) has every field of ``fields``.

    ``fields`` maps a field name to an accepted type (or tuple of types), or to
    None for "any type".  ``where`` says where the record is ("line 3").
    """
    if not isinstance(record, dict):
        raise ScorerInputError(f"{path}: {where}: expected a JSON object, got {type(record).__name__}")
    for name, types in fields.items():
        if name not in record:
            raise ScorerInputError(f"{path}: {where}: missing field '{name}'")
        value = record[name]
        # bool is an int subclass; an id or a text is never a bool.
        if types is not None and (not isinstance(value, types) or isinstance(value, bool)):
            got = "null" if value is None else type(value).__name__
            raise ScorerInputError(
                f"{path}: {where}: field '{name}' must be {_type_name(types)}, got {got}")


def not_utf8_error(path):
    """The error for a file that is not UTF-8, naming the line and byte of its first bad byte
    (a text reader decodes in chunks, so its own offsets do not say where)."""
    with open(path, "rb") as f:
        data = f.read()
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        return ScorerInputError(f"{path}: line {line}: not UTF-8 text ({exc.reason} at byte "
                                f"{column} of the line); save it as UTF-8")
    return ScorerInputError(f"{path}: not UTF-8 text")


def read_text(path):
    """The whole text of ``path`` (UTF-8, a byte-order mark allowed)."""
    with _open_text(path) as f:
        try:
            return f.read()
        except UnicodeDecodeError:
            raise not_utf8_error(path) from None


def _parse_json(text, path):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScorerInputError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:
        raise ScorerInputError(f"{path}: JSON nested too deeply to read") from None


def read_json(path):
    """Load a whole JSON file."""
    return _parse_json(read_text(path), path)


def read_jsonl(path, fields=None, allow_truncated=True, check=None):
    """Read a JSON-lines file.

    ``check(record, where)``, when given, is called on every record after its fields are
    checked, with ``where`` = "line N", to refuse a bad value in the place it stands.

    Returns ``(records, n_truncated, warnings)``.  A last line that starts a
    JSON object but is not valid JSON is what a writer killed mid-line leaves
    behind: with ``allow_truncated`` (answer files) it is skipped and counted
    (a last line that does not even start with "{" is no cut answer: an error,
    so that a resume never cuts a stranger's text off a file).  An invalid
    line anywhere else means the file is corrupt (or is not JSON-lines at
    all), which we refuse rather than guess around.  Question and annotation
    files are read with ``allow_truncated=False``: they must be complete.
    """
    lines = read_text(path).split("\n")
    # Line numbers of the non-blank lines, to tell the last one.
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    records, warnings, n_truncated = [], [], 0
    for pos, (lineno, line) in enumerate(numbered):
        try:
            record = json.loads(line)
        except RecursionError:
            raise ScorerInputError(f"{path}: line {lineno}: JSON nested too deeply to read") from None
        except json.JSONDecodeError:
            is_last = pos == len(numbered) - 1
            if allow_truncated and is_last and line.lstrip().startswith("{"):
                n_truncated += 1
                warnings.append(f"{path}: line {lineno}: last line is not valid JSON "
                                "(truncated write?); ignored")
                continue
            raise ScorerInputError(
                f"{path}: line {lineno}: not valid JSON"
                + ("" if not allow_truncated else " nor an answer line cut mid-write" if is_last
                   else " (only a truncated last line is tolerated)")
            ) from None
        check_fields(record, fields or {}, path, f"line {lineno}")
        if check is not None:
            check(record, f"line {lineno}")
        records.append(record)
    return records, n_truncated, warnings


def read_questions(path, fields=None):
    """Records of a question/annotation JSON-lines file (no truncation allowed)."""
    return read_jsonl(path, fields, allow_truncated=False)[0]


def read_records(path, fields=None):
    """Read a JSON list of objects, or JSON-lines when the file is not a list."""
    text = read_text(path)
    if not text.lstrip().startswith("["):
        return read_questions(path, fields)
    data = _parse_json(text, path)
    if not isinstance(data, list):
        raise ScorerInputError(f"{path}: expected a JSON list of objects")
    for i, record in enumerate(data):
        check_fields(record, fields or {}, path, f"entry {i}")
    return data


def raise_csv_field_limit():
    # MMBench/MMStar TSVs hold base64 images far larger than csv's default
    # 128 KiB field limit; sys.maxsize overflows a C long on some platforms.
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 10


def read_table(path, columns=()):
    """Read a TSV (or .csv) with a header row into a list of dicts.

    Every column of ``columns`` must exist in the header.
    """
    raise_csv_field_limit()
    delimiter = "," if path.lower().endswith(".csv") else "\t"
    with _open_text(path) as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        try:
            header = reader.fieldnames or []
            for name in columns:
                if name not in header:
                    raise ScorerInputError(f"{path}: line 1: missing column '{name}'")
            return list(reader)
        except UnicodeDecodeError:
            raise not_utf8_error(path) from None
        except csv.Error as exc:
            raise ScorerInputError(f"{path}: line {reader.line_num}: {exc}") from None


def index_unique(records, key_field, path):
    """``{qid_key(record[key_field]): record}``; a repeated id is an error."""
    out = {}
    for i, record in enumerate(records):
        key = qid_key(record[key_field])
        if key in out:
            raise ScorerInputError(
                f"{path}: record {i + 1}: duplicate {key_field} {key!r} (ids must be unique)")
        out[key] = record
    return out


# ----------------------------------------------------------------------------
# Answers
# ----------------------------------------------------------------------------


class Answers:
    """Answer records matched to the expected question keys."""

    def __init__(self, by_key, question_keys, n_duplicates, n_unknown, n_truncated, warnings,
                 dropped=None):
        self.by_key = by_key                  # key -> last answer record, question order
        self.missing = [k for k in question_keys if k not in by_key]
        self.n_questions = len(question_keys)
        self.n_duplicates = n_duplicates
        self.n_unknown = n_unknown
        self.n_truncated = n_truncated
        self.warnings = warnings
        self.dropped = dict(dropped or {})

    def drop(self, reason, n=1):
        """Count ``n`` read answers that are not scored, for ``reason``."""
        if n:
            self.dropped[reason] = self.dropped.get(reason, 0) + n

    def text(self, key):
        return self.by_key[key]["text"]

    def coverage(self, n_scored=None, n_questions=None):
        """The coverage counts every result dict carries."""
        n_questions = self.n_questions if n_questions is None else n_questions
        return {
            "n_questions": n_questions,
            "n_scored": len(self.by_key) if n_scored is None else n_scored,
            "n_missing": len(self.missing),
            "n_duplicates": self.n_duplicates,
            "n_unknown": self.n_unknown,
            "n_truncated_lines": self.n_truncated,
            "dropped": dict(sorted(self.dropped.items())),
            "warnings": list(self.warnings),
        }


def read_answers(path, check=None):
    """The answer records of an answers JSONL: ``(records, n_truncated, warnings)``;
    ``check`` as in ``read_jsonl``."""
    return read_jsonl(path, ANSWER_FIELDS, check=check)


def _nothing_scorable(records, question_keys, n_truncated, key_of, path):
    """The one-line reason why no answer of ``records`` matches a question."""
    if not records:
        why = ("its only line is a cut write" if n_truncated else "it holds no answer")
        return f"{path}: nothing to score: {why}"
    if not question_keys:
        return f"{path}: nothing to score: the question set is empty"
    ids = [r["question_id"] for r in records]
    return (f"{path}: nothing to score: none of its {len(records)} answer(s) has the id of a "
            f"question (e.g. question_id {ids[0]!r} with key {key_of(records[0])!r}; expected "
            f"keys like {question_keys[0]!r}); is it the answers file of this benchmark?")


def match_answers(records, question_keys, key_of=None, n_truncated=0, warnings=(), path=""):
    """Match answer records to ``question_keys`` (an ordered list of keys).

    ``key_of(record)`` gives the key of an answer (default: its question id);
    it may return None for an answer that cannot be placed.  The last answer
    for a key wins, as in LLaVA's eval and conversion scripts (each turns the
    answer list into a dict by id); earlier ones are counted as duplicates
    (an appended rerun replaces the answers it repeats).  Answers whose key
    is not a question are counted as unknown.  When no answer matches at all,
    raises ``ScorerInputError`` saying why (nothing would be scored).
    """
    key_of = key_of or (lambda rec: qid_key(rec["question_id"]))
    wanted = set(question_keys)
    by_key, dups, unknown = {}, [], []
    for record in records:
        key = key_of(record)
        if key is None or key not in wanted:
            unknown.append(record["question_id"])
        else:
            if key in by_key:
                dups.append(record["question_id"])
            by_key[key] = record
    # Question order, so that results do not depend on the answer order (not
    # even in the last digit of a float sum).
    by_key = {key: by_key[key] for key in question_keys if key in by_key}
    warnings = list(warnings)
    if dups:
        warnings.append(f"{path}: {len(dups)} duplicate answer(s) ignored, the last one kept "
                        f"(e.g. question_id {dups[0]!r})")
    if unknown:
        warnings.append(f"{path}: {len(unknown)} answer(s) for unknown questions ignored "
                        f"(e.g. question_id {unknown[0]!r})")
    if not by_key:
        raise ScorerInputError(_nothing_scorable(records, list(question_keys), n_truncated,
                                                 key_of, path))
    dropped = {"duplicate_answer": len(dups), "unknown_question_id": len(unknown),
               "truncated_last_line": n_truncated}
    answers = Answers(by_key, list(question_keys), len(dups), len(unknown), n_truncated, warnings,
                      {k: v for k, v in dropped.items() if v})
    if answers.missing:
        answers.warnings.append(f"{path}: {len(answers.missing)} of {answers.n_questions} "
                                f"expected answer(s) missing (e.g. {answers.missing[0]!r})")
    return answers


def load_answers(path, question_keys, key_of=None):
    """``read_answers`` + ``match_answers``."""
    records, n_truncated, warnings = read_answers(path)
    return match_answers(records, question_keys, key_of, n_truncated, warnings, path)


# ----------------------------------------------------------------------------
# Multiple choice
# ----------------------------------------------------------------------------

# "B", "(B)", "B.", "B)", "B:", "B," or "B" + newline at the start.  A letter
# followed by a space is not taken: "A cat" is more likely an article.
_LEADING_LETTER = re.compile(r"^(?:\(([A-Z])\)|([A-Z])(?:$|[.):,\n]))")


def leading_option_letter(text: str, letters: str):
    """The option letter a prediction starts with, if it is one of ``letters``."""
    match = _LEADING_LETTER.match(text.strip())
    if not match:
        return None
    letter = match.group(1) or match.group(2)
    return letter if letter in letters else None


# ----------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------


def _format(value):
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def human_lines(metrics, prefix=""):
    """``key: value`` lines for a (nested) metrics dict; warnings excluded."""
    lines = []
    for key, value in metrics.items():
        if key == "warnings":
            continue
        if isinstance(value, dict):
            lines.extend(human_lines(value, f"{prefix}{key}."))
        elif not isinstance(value, list):
            lines.append(f"{prefix}{key}: {_format(value)}")
    return lines


def emit(metrics, as_json=False, out=None, err=None):
    """Print warnings to stderr, then the metrics; with ``as_json`` the last
    stdout line is one JSON object of the metrics."""
    out = out or sys.stdout
    err = err or sys.stderr
    for warning in metrics.get("warnings", []):
        print(f"warning: {warning}", file=err)
    for line in human_lines(metrics):
        print(line, file=out)
    if as_json:
        print(json.dumps(metrics, ensure_ascii=False, allow_nan=False), file=out)


def check_output_path(path, flag):
    """Fail early (before any scoring) when ``path`` cannot be written: a folder, a file
    below a file, or a folder we may not write to (checked by making and removing a probe
    file there: permission bits do not tell root about a read-only file system)."""
    if not path:
        return
    if os.path.isdir(path):
        raise ScorerInputError(f"{flag} {path}: is a directory; give a file path")
    folder = os.path.dirname(os.path.abspath(path))
    probe = folder
    while not os.path.exists(probe):  # the nearest existing ancestor must be a writable folder
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ScorerInputError(f"{flag} {path}: {probe} is a file, not a folder")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ScorerInputError(f"{flag} {path}: not writable (permission denied)")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-probe.", dir=probe)
    except OSError as exc:
        raise ScorerInputError(f"{flag} {path}: cannot create a file in {probe} ({exc.strerror})") from None
    os.close(fd)
    os.unlink(tmp)


def write_atomic(path, write, flag="output"):
    """Write ``path`` through ``write(file)`` into a temporary file beside it, then rename:
    a crash leaves either the old file or the whole new one, never a half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                                   dir=folder)
    except OSError as exc:
        raise ScorerInputError(f"{flag} {path}: cannot write ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path, obj, flag="--submission-out"):
    """Write a submission JSON file atomically (creating its folder)."""
    write_atomic(path, lambda f: json.dump(obj, f, ensure_ascii=False), flag)
