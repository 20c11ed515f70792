"""`clipmoe dmu split`: hold out N image-caption records of a training set, reproducibly (the paper
evaluates retrieval on 10k records held out of ShareGPT4V).

The held-out records are the N whose sha256("<seed>:<index>") is smallest, index being the record's
position in the data as DMU reads it: the same data, N and seed give the same split on any machine and
any Python, numpy or torch version. Both parts are written as JSONL {image, caption} with absolute
image paths, so `clipmoe dmu run --data TRAIN` and `clipmoe eval retrieval --dataset json
--annotations HELDOUT` read them wherever they are.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os

from ..argtypes import at_least
from ..errors import CLIPMoEError
from .cli import IMAGE_ROOT_HELP


def held_out_indices(count: int, holdout: int, seed: int) -> set[int]:
    """The indices (of `count` records) that a split with this seed holds out."""
    if holdout >= count:
        raise CLIPMoEError(f"--holdout {holdout}: the data has only {count} records; hold out fewer so that some are left to train on")
    rank = sorted(range(count), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())
    return set(rank[:holdout])


def split_records(records, holdout: int, seed: int = 0):
    """(training records, held-out records), each in the data's order."""
    chosen = held_out_indices(len(records), holdout, seed)
    train = [r for i, r in enumerate(records) if i not in chosen]
    return train, [r for i, r in enumerate(records) if i in chosen]


def _jsonl(records) -> str:
    return "".join(json.dumps({"image": r.image, "caption": r.caption}, ensure_ascii=False) + "\n" for r in records)


def register(sub) -> None:
    p = sub.add_parser("split", help="hold out N records of a data set reproducibly (the paper's 10k) as two JSONL files",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="ShareGPT4V/LLaVA JSON, JSONL {image, caption} or img2dataset folder")
    p.add_argument("--holdout", type=at_least(1), required=True, help="how many records to hold out (the paper: 10000)")
    p.add_argument("--seed", type=int, default=0, help="which records are held out (default: 0)")
    p.add_argument("--image-root", default=None, help=IMAGE_ROOT_HELP)
    p.add_argument("--out-train", required=True, help="JSONL file for the remaining records (train DMU on it); never overwritten")
    p.add_argument("--out-heldout", required=True, help="JSONL file for the held-out records (evaluate on it); never overwritten")
    p.set_defaults(func=cmd_split)


def cmd_split(args) -> int:
    from ..outputs import check_output_file, write_text_atomic
    from .data import load_records

    check_output_file(args.out_train, "--out-train")  # before the data is read; an existing file is refused
    check_output_file(args.out_heldout, "--out-heldout")
    if os.path.abspath(args.out_train) == os.path.abspath(args.out_heldout):
        raise CLIPMoEError(f"--out-train and --out-heldout are the same file ({args.out_train}); give two paths")
    records, _ = load_records(args.data, args.image_root)
    train, heldout = split_records(records, args.holdout, args.seed)
    for path in (args.out_heldout, args.out_train):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text_atomic(args.out_heldout, _jsonl(heldout))
    write_text_atomic(args.out_train, _jsonl(train))
    print(f"held out {len(heldout)} of {len(records)} records of {args.data} (seed {args.seed}): {args.out_heldout}; "
          f"the other {len(train)}: {args.out_train}")
    return 0
