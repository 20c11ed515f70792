"""Train the demo's dense base at another size or schedule; print zero-shot and linear-probe top-1.

python scripts/demo_probes/base_variant.py --world DEMO/world --out DIR [--epochs 8] [--patch 8] [--hidden 128] [--layers 3]
                                           [--image-size N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import torch
from sklearn.linear_model import LogisticRegression

from clipmoe_demo import world as W
from clipmoe_demo.encoder import run as demo
from clipmoe_demo.encoder.base import FULL, write_base_init
from clipmoe_encoder.dmu.trainer import train_contrastive
from clipmoe_encoder.zeroshot import load_encoder

ATTRIBUTES = ("shape", "colour", "count", "size")


def linear_probe(model_dir: str, world_dir: str, n: int = 2000) -> dict:
    """Held-out top-1 of a logistic regression on the image embeddings, per attribute, over the
    scenes whose groups agree on it: what the tower encodes, whatever the text side makes of it."""
    encoder = load_encoder(model_dir)
    split = {}
    for name in ("train", "test"):
        scenes = W.read_scenes(world_dir, name)[:n]
        split[name] = (encoder.encode_images([os.path.join(world_dir, s["image"]) for s in scenes]).float().numpy(), scenes)
    out = {}
    for attribute in ATTRIBUTES:
        xy = {}
        for name, (x, scenes) in split.items():
            keep = [i for i, s in enumerate(scenes) if len({g[attribute] for g in s["groups"]}) == 1]
            xy[name] = (x[keep], [str(scenes[i]["groups"][0][attribute]) for i in keep])
        probe = LogisticRegression(max_iter=2000).fit(*xy["train"])
        out[f"{attribute}_linear_probe"] = round(100 * probe.score(*xy["test"]), 1)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=float, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--patch", type=int, default=FULL.patch_size)
    p.add_argument("--hidden", type=int, default=FULL.hidden_size)
    p.add_argument("--layers", type=int, default=FULL.num_layers)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=None,
                   help="train and evaluate on the same world drawn at this size (written to OUT/world): "
                        "every object proportionally larger in pixels")
    p.add_argument("--batches-within", choices=("none", "colour"), default="none",
                   help="colour: every batch from scenes of one main colour (ground truth), so colour tells no captions apart")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.image_size:
        resized = os.path.join(a.out, "world")
        W.write_world(resized, dataclasses.replace(W.read_settings(a.world), image_size=a.image_size))
        a.world = resized
    image_size = W.read_settings(a.world).image_size
    size = dataclasses.replace(FULL, image_size=image_size, patch_size=a.patch, hidden_size=a.hidden, num_layers=a.layers)
    init = write_base_init(os.path.join(a.out, "init"), size, W.vocabulary(), a.seed)
    start = time.perf_counter()
    groups = None
    if a.batches_within == "colour":  # train.jsonl lists the training scenes in order
        groups = [list(W.COLOURS).index(s["groups"][0]["colour"]) for s in W.read_scenes(a.world, "train")]
    model = train_contrastive(init, os.path.join(a.world, "train.jsonl"), a.out, trainable="all", stage_name="base",
                              seed=a.seed, epochs=a.epochs, batch_size=a.batch, lr=a.lr, warmup_steps=50, logit_scale=None,
                              batch_groups=groups)
    seconds = time.perf_counter() - start
    metrics = demo.evaluate_model(model, demo.evaluation_set(a.world))
    zero_shot = {k: round(v, 1) for k, v in metrics.items() if k.endswith("_top1") or k == "i2t_r1"}
    print(json.dumps({"settings": vars(a), "train_seconds": round(seconds), **zero_shot, **linear_probe(model, a.world)}))


if __name__ == "__main__":
    main()
