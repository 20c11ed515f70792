"""Train the demo's dense base at another size or schedule; print zero-shot and linear-probe top-1.

python scripts/demo_probes/base_variant.py --world DEMO/world --out DIR [--epochs 8] [--patch 8] [--hidden 128] [--layers 3]
                                           [--image-size N] [--shape-twins] [--batches-within colour]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import numpy as np
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


def shape_twin(scene: W.Scene, rng: np.random.Generator) -> W.Scene:
    """The same scene with every group's shape replaced by another one (colours, sizes, counts and
    object positions kept), so the twin's caption and image differ from the scene's in shape only."""
    groups, taken = [], set()
    for g in scene.groups:
        others = [s for s in W.SHAPES if s != g.shape and (s, g.colour) not in taken]
        shape = str(rng.choice(others))
        orientation = str(rng.choice(W.ORIENTED[shape])) if shape in W.ORIENTED else None
        groups.append(dataclasses.replace(g, shape=shape, orientation=orientation))
        taken.add((shape, g.colour))
    objects = [dataclasses.replace(o, shape=groups[o.group].shape, orientation=groups[o.group].orientation) for o in scene.objects]
    return W.Scene(groups, objects, scene.prefix)


def add_shape_twins(world_dir: str, batch: int) -> list[int]:
    """Append a shape twin of every training scene to the world's train files (images under
    images/train_twin/); returns batch groups that make every batch batch/2 scenes and their twins."""
    settings = W.read_settings(world_dir)
    n = settings.n_train
    groups = [i // (batch // 2) for i in range(n)] * 2
    with open(os.path.join(world_dir, "train.jsonl")) as f:
        if sum(1 for line in f if line.strip()) == 2 * n:  # added by an earlier run
            return groups
    os.makedirs(os.path.join(world_dir, "images", "train_twin"), exist_ok=True)
    records, scenes = [], []
    for i in range(n):
        scene, _ = W.make_scene(settings, "train", i)
        rng = np.random.default_rng([settings.seed, 100, i])
        twin = shape_twin(scene, rng)
        rel = f"images/train_twin/{i:06d}.png"
        W.render(twin, settings.image_size, rng).save(os.path.join(world_dir, rel))
        d = twin.to_dict()
        short = W.scene_rng(settings.seed + 1, "train", i).random() < settings.short_caption_prob  # the scene's caption style
        records.append({"image": rel, "caption": d["short_caption" if short else "caption"]})
        scenes.append(dict(d, image=rel, index=n + i))
    with open(os.path.join(world_dir, "train.jsonl"), "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    with open(os.path.join(world_dir, "train_scenes.jsonl"), "a") as f:
        f.writelines(json.dumps(s) + "\n" for s in scenes)
    return groups


def add_tower_arguments(p: argparse.ArgumentParser) -> None:
    """--patch, --hidden, --layers, --seed: the base's image tower and its seed (the demo's by default)."""
    p.add_argument("--patch", type=int, default=FULL.patch_size)
    p.add_argument("--hidden", type=int, default=FULL.hidden_size)
    p.add_argument("--layers", type=int, default=FULL.num_layers)
    p.add_argument("--seed", type=int, default=0)


def tower_size(a: argparse.Namespace, image_size: int):
    """The demo base's size with add_tower_arguments' flags applied."""
    return dataclasses.replace(FULL, image_size=image_size, patch_size=a.patch, hidden_size=a.hidden, num_layers=a.layers)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=float, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=64)
    add_tower_arguments(p)
    p.add_argument("--image-size", type=int, default=None,
                   help="train and evaluate on the same world drawn at this size (written to OUT/world): "
                        "every object proportionally larger in pixels")
    p.add_argument("--shape-twins", action="store_true",
                   help="add a shape twin of every training scene (same scene, other shapes) and batch each scene with its twin")
    p.add_argument("--batches-within", choices=("none", "colour"), default="none",
                   help="colour: every batch from scenes of one main colour (ground truth), so colour tells no captions apart")
    a = p.parse_args(argv)
    if a.shape_twins and a.batches_within != "none":
        p.error("--shape-twins and --batches-within each set the batches; give one of them")
    torch.set_num_threads(1)
    if a.image_size or a.shape_twins:
        redrawn = os.path.join(a.out, "world")
        settings = W.read_settings(a.world)
        W.write_world(redrawn, dataclasses.replace(settings, image_size=a.image_size or settings.image_size))
        a.world = redrawn
    size = tower_size(a, W.read_settings(a.world).image_size)
    init = write_base_init(os.path.join(a.out, "init"), size, W.vocabulary(), a.seed)
    start = time.perf_counter()
    groups = add_shape_twins(a.world, a.batch) if a.shape_twins else None
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
