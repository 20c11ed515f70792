"""Image-caption training data: readers for ShareGPT4V / LLaVA JSON, JSONL and img2dataset folders,
and the torch Dataset that decodes images lazily.

Existence of every image is checked up front (cheap, one stat per file); decoding is checked
lazily when a sample is first read, because decoding 1M images before training would take longer
than an MCL stage. A bad sample is an error naming the file and record by default; with
`skip_bad` it is counted and left out instead.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from ..errors import CLIPMoEError
from ..images import decode_rgb

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
FORMATS = ("auto", "sharegpt4v", "llava", "jsonl", "folder")


@dataclass(frozen=True)
class Record:
    """One training pair: absolute image path and its caption (newlines already folded to spaces)."""

    image: str
    caption: str


def load_records(path, image_root=None, fmt: str = "auto", skip_bad: bool = False):
    """Read a training set into `(records, report)`.

    path: a ShareGPT4V or LLaVA JSON list, a JSON list or JSONL file of {"image", "caption"} (a
    "caption" list or "captions" list gives one record per caption), or a folder of
    image + .txt pairs (img2dataset's `files` layout, shard folders nested at any depth).
    image_root: where relative image paths start (default: `default_image_root`).
    fmt: "auto" (from the path and the first record) or one of "sharegpt4v", "llava", "jsonl", "folder".
    skip_bad: leave out (and count) records with a missing image or an empty caption instead of
    raising CLIPMoEError.
    report: {"format", "total", "kept", "missing_image", "empty_caption", "bad_record"}.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CLIPMoEError(f"{path}: no such file or directory (training data)")
    if fmt not in FORMATS:
        raise CLIPMoEError(f"data format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = _detect_format(path)
    if image_root is not None and not os.path.isdir(image_root):
        raise CLIPMoEError(f"{os.fspath(image_root)}: image root is not a directory")
    report = {"format": fmt, "total": 0, "kept": 0, "missing_image": 0, "empty_caption": 0, "bad_record": 0}
    if fmt == "folder":
        raw = list(_folder_pairs(path))
    elif fmt == "jsonl":
        raw = list(_jsonl_pairs(path))
    else:
        raw = list(_conversation_pairs(path, fmt))
    root = os.fspath(image_root) if image_root is not None else default_image_root(path, raw, skip_bad)
    records = []
    for where, image, caption in raw:
        report["total"] += 1
        problem = None
        if image is None:  # a malformed record: `caption` holds what is wrong with it
            problem, key = f"{where}: {caption}", "bad_record"
        if problem is None:
            full = image if os.path.isabs(image) else os.path.join(root, image)
            caption = " ".join(caption.split())  # newlines and runs of spaces -> one space
            if not os.path.isfile(full):
                problem, key = f"{where}: image file {full} does not exist (image root {root})", "missing_image"
            elif not caption:
                problem, key = f"{where}: empty caption (image {full})", "empty_caption"
        if problem is not None:
            if not skip_bad:
                raise CLIPMoEError(problem + " (pass --skip-bad to leave such records out)")
            report[key] += 1
            continue
        records.append(Record(os.path.abspath(full), caption))
    report["kept"] = len(records)
    if not records:
        raise CLIPMoEError(f"{path}: no usable image-caption pairs ({report})")
    return records, report


def image_root_candidates(path) -> list[str]:
    """Where relative image paths may start when no image root is given: the data file's folder (a
    JSON next to its images), then that folder's parent (ShareGPT4V's and LLaVA's published layout:
    data/sharegpt4v/*.json with "coco/train2017/x.jpg" meaning data/coco/train2017/x.jpg, as their
    training scripts pass --image_folder data). A folder of image + .txt pairs is its own root."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        return [path]
    folder = os.path.dirname(path)
    return [folder, os.path.dirname(folder)]


def default_image_root(path, raw, skip_bad: bool = False) -> str:
    """The first candidate root (see `image_root_candidates`) under which the first record with a
    relative image path finds its image (with `skip_bad`, the first record that finds its image
    under any). None does: CLIPMoEError naming the first such image, its record and every root
    tried, checked before anything slow."""
    candidates = image_root_candidates(path)
    relative = [(where, image) for where, image, _ in raw if image is not None and not os.path.isabs(image)]
    if not relative or len(candidates) == 1:
        return candidates[0]
    for _, image in relative if skip_bad else relative[:1]:
        for root in candidates:
            if os.path.isfile(os.path.join(root, image)):
                return root
    where, image = relative[0]
    raise CLIPMoEError(f"{where}: image {image} is under none of the image roots tried ({', '.join(candidates)}); "
                       "pass --image-root with the folder its path starts from (or --skip-bad to leave such records out)")


def _detect_format(path: str) -> str:
    if os.path.isdir(path):
        return "folder"
    if path.endswith(".jsonl"):
        return "jsonl"
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    if head.startswith(b"["):
        return "sharegpt4v"  # conversations or {"image","caption"} entries; both handled there
    if head.startswith(b"{"):
        if path.endswith(".json"):
            _refuse_single_object(path)
        return "jsonl"
    raise CLIPMoEError(f"{path}: cannot tell the data format (expected a JSON list, JSONL or a folder); pass --data-format")


def _refuse_single_object(path):
    """A .json file holding one object is not a training set (read as JSONL it would be one record,
    and the run would fail after features and clustering); several objects, one per line, are JSONL."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return  # not one JSON document: JSONL under a .json name, read (and checked) line by line
    raise CLIPMoEError(f"{path}: holds one JSON {type(data).__name__}, expected a JSON list of records "
                       "(ShareGPT4V / LLaVA) or JSONL with one record per line (name it .jsonl)")


def _conversation_pairs(path, fmt):
    """ShareGPT4V: caption = conversations[1].value. LLaVA: the first turn from "gpt".
    A list entry with a plain "caption" field is accepted too."""
    if os.path.isdir(path):
        raise CLIPMoEError(f"{path}: is a directory; --data-format {fmt} reads a JSON file")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CLIPMoEError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, list):
        raise CLIPMoEError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for i, entry in enumerate(data):
        where = f"{path}: record {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            yield where, None, "field 'image' is missing or not a string"
            continue
        if "conversations" not in entry and ("caption" in entry or "captions" in entry):
            yield from _caption_pairs(where, entry)
            continue
        turns = entry.get("conversations")
        if not isinstance(turns, list):
            yield where, None, "field 'conversations' (ShareGPT4V / LLaVA) or 'caption' is missing or not a list"
            continue
        caption = None
        if fmt == "sharegpt4v" and len(turns) > 1 and isinstance(turns[1], dict):
            caption = turns[1].get("value")
        else:
            caption = next((t.get("value") for t in turns if isinstance(t, dict) and t.get("from") == "gpt"), None)
        if not isinstance(caption, str):
            yield where, None, "field 'conversations' has no gpt turn with a string 'value'"
            continue
        yield where, entry["image"], caption


def _jsonl_lines(path):
    """(line number, text) of a UTF-8 file; bytes that are not UTF-8 are an error naming the line."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                yield n, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise CLIPMoEError(f"{path}: line {n}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def _jsonl_pairs(path):
    if os.path.isdir(path):
        raise CLIPMoEError(f"{path}: is a directory; --data-format jsonl reads a file")
    for n, line in _jsonl_lines(path):
        if not line.strip():
            continue
        where = f"{path}: line {n}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            yield where, None, f"not valid JSON ({err})"
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            yield where, None, "field 'image' is missing or not a string"
        else:
            yield from _caption_pairs(where, entry)


def _caption_pairs(where, entry):
    """{"image", "caption": str | [str]} or {"image", "captions": [str]}: one pair per caption (an
    evaluation set such as COCO has several per image)."""
    key = "captions" if "captions" in entry else "caption"
    value = entry.get(key)
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        yield where, None, f"field {key!r} is missing or not a string or non-empty list of strings"
        return
    for text in texts:
        yield where, entry["image"], text


def _folder_pairs(root):
    """img2dataset `files` layout: <shard>/<key>.jpg next to <shard>/<key>.txt, sorted by path."""
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in IMAGE_EXTENSIONS:
                continue
            image = os.path.join(folder, name)
            text = os.path.join(folder, stem + ".txt")
            where = f"{image}"
            if not os.path.isfile(text):
                yield where, image, ""  # reported as an empty caption
                continue
            with open(text, encoding="utf-8", errors="replace") as f:
                yield where, image, f.read()


class ImageTextDataset(torch.utils.data.Dataset):
    """Decodes, preprocesses and tokenises records on demand.

    Each item is a dict of pixel_values, input_ids, attention_mask and `valid` (False only for an
    undecodable image under skip_bad; such rows are masked out of the loss and the features).
    cache: keep each item after its first read, so that a small dataset trained for several epochs
    (or stages) decodes and preprocesses each image once; it holds all of the dataset's pixels in
    memory. Each process has its own cache (data-loader workers fill theirs and drop it).
    """

    def __init__(self, records, image_processor, tokenizer, max_length: int, skip_bad: bool = False, cache: bool = False):
        self.records, self.processor, self.tokenizer = records, image_processor, tokenizer
        self.max_length, self.skip_bad = max_length, skip_bad
        self._blank = None
        self._cache = {} if cache else None

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        if self._cache is None:
            return self._read(i)
        if i not in self._cache:
            self._cache[i] = self._read(i)
        return self._cache[i]

    def _read(self, i):
        record = self.records[i]
        tokens = self.tokenizer(record.caption, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt")
        valid = True
        try:
            image = decode_rgb(record.image)  # grayscale, palette and RGBA images become RGB
            pixels = self.processor(images=image, return_tensors="pt")["pixel_values"][0]
        except Exception as err:  # noqa: BLE001  PIL raises many types (OSError, SyntaxError, ValueError...)
            if not self.skip_bad:
                raise CLIPMoEError(f"{record.image}: cannot decode image (sample {i}): {err}") from None
            pixels, valid = self._blank_pixels(), False
        return {
            "pixel_values": pixels,
            "input_ids": tokens["input_ids"][0],
            "attention_mask": tokens["attention_mask"][0],
            "valid": torch.tensor(valid),
        }

    def _blank_pixels(self):
        if self._blank is None:
            size = self.processor.crop_size if getattr(self.processor, "do_center_crop", False) else self.processor.size
            h = size.get("height") or size.get("shortest_edge")
            w = size.get("width") or size.get("shortest_edge")
            self._blank = torch.zeros(3, h, w)
        return self._blank
