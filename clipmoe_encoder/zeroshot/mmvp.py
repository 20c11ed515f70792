"""MMVP-VLM (Tong et al., "Eyes Wide Shut?"): CLIP-blind image pairs, the CLIP-MoE paper's Table 1.

Published layout (the MMVP_VLM dataset and its evaluate_vlm.py read it this way):

    <data>/Questions.csv                       header: Question ID, Type, Statement
    <data>/MLLM_VLM Images/<Type>/<Question ID>.jpg

Rows come in consecutive pairs (rows 1+2, 3+4, ...) of the same Type (visual pattern): each row
is one image and the statement that describes it. The published set has 9 patterns x 15 pairs.

Scoring follows the official script: each statement ("a photo of " + Statement) picks the more
similar of its pair's two images; a pair counts only when both statements pick their own image.
A tie picks neither (a miss). Per-pattern accuracy is the percentage of its pairs that count;
`average` is the mean over patterns (as in the paper's table), `overall` the mean over pairs.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass

import torch

from ..errors import CLIPMoEError

QUESTIONS_FILE = "Questions.csv"
IMAGE_FOLDER = "MLLM_VLM Images"
COLUMNS = ("Question ID", "Type", "Statement")
DEFAULT_PREFIX = "a photo of "


@dataclass(frozen=True)
class MMVPPair:
    pattern: str
    question_ids: tuple[int, int]
    images: tuple[str, str]
    statements: tuple[str, str]


def read_mmvp(data) -> list[MMVPPair]:
    """The pairs of an MMVP-VLM folder in file order; one CLIPMoEError naming the file, row and
    field for anything that is not the published layout (every image is checked to exist)."""
    data = os.fspath(data)
    csv_path = os.path.join(data, QUESTIONS_FILE)
    if not os.path.isdir(data):
        raise CLIPMoEError(f"{data}: no such directory (the MMVP-VLM folder with {QUESTIONS_FILE} and '{IMAGE_FOLDER}/')")
    if not os.path.isfile(csv_path):
        raise CLIPMoEError(f"{csv_path}: missing; the MMVP-VLM folder holds {QUESTIONS_FILE} and '{IMAGE_FOLDER}/'")
    rows = _read_rows(csv_path)
    if not rows:
        raise CLIPMoEError(f"{csv_path}: no questions")
    if len(rows) % 2:
        raise CLIPMoEError(f"{csv_path}: {len(rows)} questions, an odd number; rows pair up (1+2, 3+4, ...)")
    image_root = os.path.join(data, IMAGE_FOLDER)
    pairs = []
    for first, second in zip(rows[0::2], rows[1::2]):
        (line_a, id_a, type_a, text_a), (line_b, id_b, type_b, text_b) = first, second
        if type_a != type_b:
            raise CLIPMoEError(f"{csv_path}: line {line_b}: field 'Type' is {type_b!r} but its pair partner "
                               f"(line {line_a}) has {type_a!r}")
        images = tuple(os.path.join(image_root, type_a, f"{qid}.jpg") for qid in (id_a, id_b))
        for line, image in ((line_a, images[0]), (line_b, images[1])):
            if not os.path.isfile(image):
                raise CLIPMoEError(f"{csv_path}: line {line}: image {image} does not exist")
        pairs.append(MMVPPair(type_a, (id_a, id_b), images, (text_a, text_b)))
    return pairs


def _read_rows(csv_path) -> list[tuple[int, int, str, str]]:
    """(line number, question id, type, statement) per data row."""
    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise CLIPMoEError(f"{csv_path}: header {header} lacks column(s) {', '.join(map(repr, missing))}; "
                                   f"expected {', '.join(COLUMNS)}")
            where = [header.index(c) for c in COLUMNS]
            rows, seen = [], set()
            for record in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in record):
                    continue
                if len(record) < len(header):
                    raise CLIPMoEError(f"{csv_path}: line {line}: {len(record)} fields, expected {len(header)}")
                qid, qtype, statement = (record[i].strip() for i in where)
                if not qid.isdigit():
                    raise CLIPMoEError(f"{csv_path}: line {line}: field 'Question ID' is {qid!r}, expected a whole number")
                for name, value in (("Type", qtype), ("Statement", statement)):
                    if not value:
                        raise CLIPMoEError(f"{csv_path}: line {line}: field {name!r} is empty")
                if "/" in qtype or "\\" in qtype or qtype in (".", ".."):
                    raise CLIPMoEError(f"{csv_path}: line {line}: field 'Type' is {qtype!r}, expected a folder name")
                if int(qid) in seen:
                    raise CLIPMoEError(f"{csv_path}: line {line}: field 'Question ID' {qid} appears twice")
                seen.add(int(qid))
                rows.append((line, int(qid), qtype, statement))
    except UnicodeDecodeError as err:
        raise CLIPMoEError(f"{csv_path}: not UTF-8 text ({err})") from None
    except csv.Error as err:
        raise CLIPMoEError(f"{csv_path}: not a readable CSV file ({err})") from None
    return rows


def mmvp_pair_hits(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """(P,) bool: pair p counts when statement 2p is strictly closer to image 2p than to image 2p+1
    and statement 2p+1 strictly closer to image 2p+1 than to image 2p. Rows are pair-interleaved
    (image/statement 2p and 2p+1 form pair p); embeddings are compared by dot product."""
    if image_emb.shape != text_emb.shape or image_emb.ndim != 2 or image_emb.shape[0] % 2:
        raise CLIPMoEError(f"image embeddings {list(image_emb.shape)} and text embeddings {list(text_emb.shape)} must "
                           "be the same (2P, D) shape")
    images = image_emb.float().view(-1, 2, image_emb.shape[1])
    texts = text_emb.float().view(-1, 2, text_emb.shape[1])
    sims = torch.einsum("ptd,pid->pti", texts, images)  # sims[p, t, i]: statement t of pair p vs image i
    first_ok = sims[:, 0, 0] > sims[:, 0, 1]
    second_ok = sims[:, 1, 1] > sims[:, 1, 0]
    return first_ok & second_ok


def mmvp_scores(patterns: list[str], hits: torch.Tensor) -> dict:
    """Per-pattern accuracy (percent, patterns in first-seen order), their mean `average`, the
    pair-weighted `overall`, and num_pairs / num_patterns."""
    if len(patterns) != hits.numel() or not patterns:
        raise CLIPMoEError(f"{len(patterns)} pattern names for {hits.numel()} pair outcomes")
    per_pattern: dict[str, list[bool]] = {}
    for pattern, hit in zip(patterns, hits.tolist()):
        per_pattern.setdefault(pattern, []).append(bool(hit))
    accuracy = {p: 100.0 * sum(h) / len(h) for p, h in per_pattern.items()}
    return {
        "patterns": accuracy,
        "average": sum(accuracy.values()) / len(accuracy),
        "overall": 100.0 * float(hits.double().mean()),
        "num_pairs": len(patterns),
        "num_patterns": len(accuracy),
    }


def evaluate_mmvp(encoder, pairs: list[MMVPPair], prefix: str = DEFAULT_PREFIX, batch_size: int = 64,
                  text_batch_size: int = 256, progress: bool = False) -> dict:
    """MMVP-VLM scores of any zero-shot encoder (HF CLIP, CLIP-MoE, open_clip; see load_encoder)."""
    from .metrics import _as_encoder

    if not pairs:
        raise CLIPMoEError("no MMVP pairs to evaluate")
    encoder = _as_encoder(encoder)
    images = [path for pair in pairs for path in pair.images]
    statements = [prefix + text for pair in pairs for text in pair.statements]
    image_emb = encoder.encode_images(images, batch_size=batch_size, progress=progress)
    text_emb = encoder.encode_texts(statements, batch_size=text_batch_size, progress=progress)
    return mmvp_scores([pair.pattern for pair in pairs], mmvp_pair_hits(image_emb, text_emb))
