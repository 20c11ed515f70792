"""`clipmoe eval retrieval|classify|mmvp`: zero-shot evaluation from the command line.

Progress bars go to stderr; with --json the last line on stdout is one JSON object of the metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from ..argtypes import at_least
from ..errors import CLIPMoEError

RETRIEVAL_DATASETS = ("coco-karpathy", "coco-val2017", "flickr-karpathy", "flickr-full", "json")
CLASSIFY_DATASETS = ("folder", "imagenet", "cifar10", "cifar100")


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="zero-shot retrieval / classification / MMVP-VLM of a CLIP, open_clip or CLIP-MoE model",
                                   description=__doc__)
    tasks = parser.add_subparsers(dest="eval_task", required=True)

    r = tasks.add_parser("retrieval", help="image<->text recall@1/5/10 (COCO, Flickr30k, any image-text JSON)")
    _common(r)
    r.add_argument("--dataset", required=True, choices=RETRIEVAL_DATASETS,
                   help="coco-karpathy / flickr-karpathy: dataset_coco.json / dataset_flickr30k.json; coco-val2017: "
                        "captions_val2017.json; flickr-full: results_20130124.token (all 31,783 images); json: what DMU "
                        "trains on (ShareGPT4V / LLaVA JSON, JSON list or JSONL of {image, caption(s)}, img2dataset folder), "
                        "e.g. the held-out file of `clipmoe dmu split`")
    r.add_argument("--annotations", required=True, help="the annotation file of --dataset")
    r.add_argument("--images", default=None, help="image folder (required except for --dataset json, where relative paths "
                                                  "start at the data file's folder or its parent unless given, as DMU's --image-root)")
    r.add_argument("--skip-bad", action="store_true", help="--dataset json: leave out records with a missing image or empty "
                                                           "caption (counted on stderr) instead of stopping at the first")
    r.add_argument("--split", default="test", help="Karpathy split to evaluate (default: test)")
    r.add_argument("--captions-per-image", type=at_least(0), default=5,
                   help="captions kept per image for COCO (first N, default 5 as in the 5k/25k protocol; 0 keeps all)")
    r.set_defaults(func=run_retrieval)

    c = tasks.add_parser("classify", help="zero-shot top-1/top-5 accuracy (ImageNet-style folder, CIFAR-10/100)")
    _common(c)
    c.add_argument("--dataset", required=True, choices=CLASSIFY_DATASETS,
                   help="folder: <data>/<class>/<image>; imagenet: the same (or <data>/val/<wnid>/); cifar10 / cifar100: "
                        "the python batches folder or its parent")
    c.add_argument("--data", required=True, help="dataset folder")
    c.add_argument("--classnames", default=None,
                   help="class names: one per line in sorted-folder order, or JSON {folder: name}; default: folder "
                        "names ('_' -> ' '), for imagenet with 1000 wnid folders open_clip's OpenAI class names")
    c.add_argument("--templates", default="openai", help="'openai' (the 80 ImageNet prompts), 'simple' or a file, one template with {} per line")
    c.set_defaults(func=run_classify)

    m = tasks.add_parser("mmvp", help="MMVP-VLM pair accuracy per visual pattern (the CLIP-MoE paper's Table 1)")
    _common(m)
    m.add_argument("--data", required=True,
                   help="the MMVP_VLM folder: Questions.csv (Question ID, Type, Statement) and 'MLLM_VLM Images/<Type>/<id>.jpg'")
    m.add_argument("--prefix", default="a photo of ", help="put before every statement (default 'a photo of ', as the official script)")
    m.set_defaults(func=run_mmvp)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="a saved CLIPModel / CLIP-MoE directory (with tokenizer and preprocessor_config.json), or "
                        "open_clip:<model name>:<checkpoint file or pretrained tag>")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--batch-size", type=at_least(1), default=64, help="images per forward pass (default 64)")
    p.add_argument("--text-batch-size", type=at_least(1), default=256, help="texts per forward pass (default 256)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object on the last line")


def _device(name):
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def read_retrieval(dataset, annotations, images=None, split="test", captions_per_image=5, skip_bad=False):
    """(image paths, captions per image) for a --dataset choice."""
    from . import datasets as ds

    keep = captions_per_image or None
    if dataset != "json" and images is None:
        raise CLIPMoEError(f"--images is required for --dataset {dataset}")
    if dataset in ("coco-karpathy", "flickr-karpathy"):
        return ds.read_karpathy(annotations, images, split=split, captions_per_image=keep)
    if dataset == "coco-val2017":
        return ds.read_coco_captions(annotations, images, captions_per_image=keep)
    if dataset == "flickr-full":
        return ds.read_flickr_token(annotations, images)
    if dataset == "json":
        paths, captions, report = ds.read_image_text_json(annotations, images, skip_bad=skip_bad)
        if report["kept"] < report["total"]:
            print(f"warning: {annotations}: {report['total'] - report['kept']} of {report['total']} records left out "
                  f"({report})", file=sys.stderr)
        return paths, captions
    raise CLIPMoEError(f"unknown retrieval dataset {dataset!r}; choose from {', '.join(RETRIEVAL_DATASETS)}")


_WNID = re.compile(r"^n\d{8}$")


def read_classification(dataset, data, classnames=None):
    """(images, labels, class names) for a --dataset choice."""
    from . import datasets as ds

    if dataset in ("cifar10", "cifar100"):
        images, labels, names = ds.read_cifar(data, dataset)
        if classnames:
            names = ds.load_classnames(classnames, names)
        return images, labels, names
    if dataset == "imagenet" and os.path.isdir(os.path.join(data, "val")):
        data = os.path.join(data, "val")
    if dataset not in ("folder", "imagenet"):
        raise CLIPMoEError(f"unknown classification dataset {dataset!r}; choose from {', '.join(CLASSIFY_DATASETS)}")
    images, labels, folders = ds.read_class_folder(data)
    if classnames:
        return images, labels, ds.load_classnames(classnames, folders)
    if dataset == "imagenet" and len(folders) == 1000 and all(_WNID.match(f) for f in folders):
        names = _imagenet_classnames()
        if names is not None:
            return images, labels, names
    return images, labels, ds.folder_classnames(folders)


def _imagenet_classnames():
    # open_clip ships OpenAI's curated ImageNet class names in sorted-wnid order (class 0 = tench,
    # n01440764), the names the published zero-shot numbers use; bare wnids would be meaningless prompts.
    try:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    except ImportError:
        print("warning: open_clip is not installed, so ImageNet prompts use the folder names (wnids); "
              "pass --classnames for meaningful names", file=sys.stderr)
        return None
    return list(IMAGENET_CLASSNAMES)


def run_retrieval(args) -> int:
    from .encoders import load_encoder
    from .metrics import evaluate_retrieval

    images, captions = read_retrieval(args.dataset, args.annotations, args.images, args.split, args.captions_per_image,
                                       args.skip_bad)
    encoder = load_encoder(args.model, device=_device(args.device))
    metrics = evaluate_retrieval(encoder, images, captions, batch_size=args.batch_size,
                                 text_batch_size=args.text_batch_size, progress=not args.no_progress)
    return _report(args, dict(task="retrieval", dataset=args.dataset, model=str(args.model), **metrics))


def run_classify(args) -> int:
    from .encoders import load_encoder
    from .metrics import evaluate_classification
    from .templates import resolve_templates

    images, labels, names = read_classification(args.dataset, args.data, args.classnames)
    templates = resolve_templates(args.templates)  # a bad templates file is found before the model loads
    encoder = load_encoder(args.model, device=_device(args.device))
    metrics = evaluate_classification(encoder, images, labels, names, templates=templates, batch_size=args.batch_size,
                                      text_batch_size=args.text_batch_size, progress=not args.no_progress)
    return _report(args, dict(task="classify", dataset=args.dataset, model=str(args.model), **metrics))


def run_mmvp(args) -> int:
    from .encoders import load_encoder
    from .mmvp import evaluate_mmvp, read_mmvp

    pairs = read_mmvp(args.data)
    encoder = load_encoder(args.model, device=_device(args.device))
    metrics = evaluate_mmvp(encoder, pairs, prefix=args.prefix, batch_size=args.batch_size,
                            text_batch_size=args.text_batch_size, progress=not args.no_progress)
    return _report(args, dict(task="mmvp", dataset="mmvp-vlm", model=str(args.model), **metrics))


def _report(args, result: dict) -> int:
    if args.json:
        print(json.dumps(result), flush=True)
        return 0
    print(f"{result['task']} on {result['dataset']} with {result['model']}")
    for key, value in result.items():
        if isinstance(value, dict):  # e.g. MMVP's per-pattern accuracies, one line each
            for name, number in value.items():
                print(f"  {name:>34}: {number:.2f}")
        elif key not in ("task", "dataset", "model"):
            print(f"  {key:>14}: {value:.2f}" if isinstance(value, float) else f"  {key:>14}: {value}")
    return 0
