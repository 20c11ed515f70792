"""Shared helpers for the benchmark scorers (standard library only).

Conventions used by every scorer:

* Answers are matched to questions by ``question_id`` (never by position).
  Ids are compared as strings (``qid_key``) so that ``1`` and ``"1"`` match:
  LLaVA writes some ids as ints and others as strings.
* Accuracies are percentages (0-100).  MME reports its own score scale and
  OCRBench reports counts, as their official tools do.
* Every result dict carries the coverage counts ``n_questions``,
  ``n_scored``, ``n_missing``, ``n_duplicates``, ``n_unknown`` and
  ``n_truncated_lines`` plus a ``warnings`` list.
* Bad input raises ``ScorerInputError`` with one line naming the file, the
  place in it and the field; the CLI prints it and exits with status 2.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys

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


def _not_utf8(path, exc):
    return ScorerInputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})")


def _read_text(path):
    with _open_text(path) as f:
        try:
            return f.read()
        except UnicodeDecodeError as exc:
            raise _not_utf8(path, exc) from None


def _parse_json(text, path):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScorerInputError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None


def read_json(path):
    """Load a whole JSON file."""
    return _parse_json(_read_text(path), path)


def read_jsonl(path, fields=None, allow_truncated=True):
    """Read a JSON-lines file.

    Returns ``(records, n_truncated, warnings)``.  A last line that is not valid
    JSON is what a writer killed mid-line leaves behind: with
    ``allow_truncated`` (answer files) it is skipped and counted.  An invalid
    line anywhere else means the file is corrupt (or is not JSON-lines at
    all), which we refuse rather than guess around.  Question and annotation
    files are read with ``allow_truncated=False``: they must be complete.
    """
    lines = _read_text(path).split("\n")
    # Line numbers of the non-blank lines, to tell the last one.
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    records, warnings, n_truncated = [], [], 0
    for pos, (lineno, line) in enumerate(numbered):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if allow_truncated and pos == len(numbered) - 1:
                n_truncated += 1
                warnings.append(f"{path}: line {lineno}: last line is not valid JSON "
                                "(truncated write?); ignored")
                continue
            raise ScorerInputError(
                f"{path}: line {lineno}: not valid JSON"
                + (" (only a truncated last line is tolerated)" if allow_truncated else "")
            ) from None
        check_fields(record, fields or {}, path, f"line {lineno}")
        records.append(record)
    return records, n_truncated, warnings


def read_questions(path, fields=None):
    """Records of a question/annotation JSON-lines file (no truncation allowed)."""
    return read_jsonl(path, fields, allow_truncated=False)[0]


def read_records(path, fields=None):
    """Read a JSON list of objects, or JSON-lines when the file is not a list."""
    text = _read_text(path)
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
        except UnicodeDecodeError as exc:
            raise _not_utf8(path, exc) from None
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

    def __init__(self, by_key, question_keys, n_duplicates, n_unknown, n_truncated, warnings):
        self.by_key = by_key                  # key -> first answer record, question order
        self.missing = [k for k in question_keys if k not in by_key]
        self.n_questions = len(question_keys)
        self.n_duplicates = n_duplicates
        self.n_unknown = n_unknown
        self.n_truncated = n_truncated
        self.warnings = warnings

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
            "warnings": list(self.warnings),
        }


def read_answers(path):
    """The answer records of an answers JSONL: ``(records, n_truncated, warnings)``."""
    return read_jsonl(path, ANSWER_FIELDS)


def match_answers(records, question_keys, key_of=None, n_truncated=0, warnings=(), path=""):
    """Match answer records to ``question_keys`` (an ordered list of keys).

    ``key_of(record)`` gives the key of an answer (default: its question id);
    it may return None for an answer that cannot be placed.  The first answer
    for a key wins; later ones are counted as duplicates.  Answers whose key
    is not a question are counted as unknown.
    """
    key_of = key_of or (lambda rec: qid_key(rec["question_id"]))
    wanted = set(question_keys)
    by_key, dups, unknown = {}, [], []
    for record in records:
        key = key_of(record)
        if key is None or key not in wanted:
            unknown.append(record["question_id"])
        elif key in by_key:
            dups.append(record["question_id"])
        else:
            by_key[key] = record
    # Question order, so that results do not depend on the answer order (not
    # even in the last digit of a float sum).
    by_key = {key: by_key[key] for key in question_keys if key in by_key}
    warnings = list(warnings)
    if dups:
        warnings.append(f"{path}: {len(dups)} duplicate answer(s) ignored, first kept "
                        f"(e.g. question_id {dups[0]!r})")
    if unknown:
        warnings.append(f"{path}: {len(unknown)} answer(s) for unknown questions ignored "
                        f"(e.g. question_id {unknown[0]!r})")
    answers = Answers(by_key, list(question_keys), len(dups), len(unknown), n_truncated, warnings)
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


def write_json(path, obj):
    """Write a submission JSON file (creating its folder)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)
