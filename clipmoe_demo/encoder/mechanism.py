"""DMU's mechanism on the toy world, measured: which attribute each MCL stage's clustering splits,
which expert the tokens of each shape / colour are routed to, and each expert alone as a dense CLIP.

The world knows every scene's attributes, so the clusters and the routing can be read against the
ground truth: a stage whose clusters are colour-pure draws single-colour contrastive batches, which
only the other attributes (shape, count, size) can solve - the multistage contrastive learning
the paper builds its experts from.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from .. import world as W

ATTRIBUTES = ("shape", "colour", "count", "size", "region")
BACKGROUND = "background"


def scene_attributes(scene: dict) -> dict[str, str]:
    """The attributes of a scene's main group (the one its short caption names), as strings."""
    main = scene["groups"][0]
    return {a: str(main[a]) for a in ATTRIBUTES}


# ---------------------------------------------------------------------------------------------
# cluster purity

def cluster_purity(labels, values) -> dict[str, float]:
    """How well cluster `labels` split the attribute `values` (same length; labels < 0 left out).

    purity: share of samples whose value is their cluster's majority value (1 = every cluster holds
    one value); majority_floor: the purity of a single cluster (the commonest value's share), what
    purity is read against; nmi: normalised mutual information (arithmetic mean, sklearn's), 0 for
    independent labels and 1 when the clusters are exactly the values."""
    from sklearn.metrics import normalized_mutual_info_score
    from sklearn.metrics.cluster import contingency_matrix

    labels = np.asarray(labels)
    keep = labels >= 0
    labels, values = labels[keep], [v for v, k in zip(values, keep) if k]
    if not len(labels):
        return {"purity": float("nan"), "majority_floor": float("nan"), "nmi": float("nan"), "samples": 0}
    counts = contingency_matrix(values, labels)  # (values, clusters)
    return {"purity": float(counts.max(axis=0).sum() / len(labels)), "majority_floor": float(counts.sum(axis=1).max() / len(labels)),
            "nmi": float(normalized_mutual_info_score(values, labels)), "samples": int(len(labels))}


def split_stage_labels(accumulated, clusters_per_modality: int) -> dict[str, np.ndarray]:
    """One stage's labels from the accumulated ids DMU stores (clustering.accumulate_labels:
    accumulated = previous * k^2 + text * k + image): the stage's image and text clusters, their
    joint cluster, and the accumulated cluster MCL draws its batches from."""
    acc = np.asarray(accumulated, dtype=np.int64)
    k = clusters_per_modality
    joint = np.where(acc >= 0, acc % (k * k), -1)
    return {"image": np.where(acc >= 0, joint % k, -1), "text": np.where(acc >= 0, joint // k, -1), "joint": joint,
            "accumulated": acc}


def stage_cluster_purity(dmu_dir: str, train_scenes: list[dict], clusters_per_modality: int) -> list[dict]:
    """Per clustering stage s of a DMU run folder (the clusters MCL stage s+1 trains on): purity and
    NMI of each kind of cluster against each attribute of the training scenes."""
    from clipmoe_encoder.dmu.features import load_tensors

    attrs = [scene_attributes(s) for s in train_scenes]
    out = []
    s = 0
    while os.path.isfile(path := os.path.join(dmu_dir, "clusters", f"labels_stage{s}.safetensors")):
        labels = load_tensors(path)["labels"].numpy()
        if len(labels) != len(attrs):
            raise ValueError(f"{path}: {len(labels)} labels for {len(attrs)} training scenes")
        kinds = split_stage_labels(labels, clusters_per_modality)
        out.append({"stage": s, "trains": f"mcl{s + 1}", "clusters": int(len(np.unique(labels[labels >= 0]))),
                    **{kind: {a: cluster_purity(lab, [x[a] for x in attrs]) for a in ATTRIBUTES} for kind, lab in kinds.items()}})
        s += 1
    return out


# ---------------------------------------------------------------------------------------------
# routing by attribute

def patch_owners(objects: list[dict], image_size: int, patch_size: int) -> list[int | None]:
    """For each patch (row-major, as the vision tower orders its tokens after CLS): the index of the
    one object whose disc overlaps the patch, -1 when none does (background), None when two or more
    objects overlap it (a token of mixed content, left out)."""
    grid = image_size // patch_size
    side = patch_size / image_size  # patch side as a fraction of the image
    owners = []
    for row in range(grid):
        for col in range(grid):
            x0, y0 = col * side, row * side
            hits = []
            for i, o in enumerate(objects):
                # distance from the disc's centre to the nearest point of the patch square
                dx = max(x0 - o["x"], 0.0, o["x"] - (x0 + side))
                dy = max(y0 - o["y"], 0.0, o["y"] - (y0 + side))
                if dx * dx + dy * dy < o["radius"] ** 2:
                    hits.append(i)
            owners.append(-1 if not hits else hits[0] if len(hits) == 1 else None)
    return owners


def token_values(scene: dict, attribute: str, image_size: int, patch_size: int) -> list[str | None]:
    """The attribute value of each vision token of a scene: CLS first (None: it sees the whole
    image), then every patch: its object's value, BACKGROUND, or None for a mixed patch."""
    objects = scene["objects"]
    values = [None]
    for owner in patch_owners(objects, image_size, patch_size):
        values.append(None if owner is None else BACKGROUND if owner < 0 else str(objects[owner][attribute]))
    return values


TEXT_WORDS = {"shape": {**{s: s for s in W.SHAPES}, **{p: s for s, p in W.PLURALS.items()}},
              "colour": {c: c for c in W.COLOURS}}


def routing_table(first_choice: np.ndarray, values: list, num_experts: int) -> dict:
    """first_choice: (tokens,) expert index of each token; values: (tokens,) its attribute value or
    None (left out). Returns {value: {"tokens": n, "share": [fraction routed first to each expert]}},
    values in sorted order."""
    table = {}
    for v in sorted({v for v in values if v is not None}):
        chosen = first_choice[[i for i, x in enumerate(values) if x == v]]
        table[v] = {"tokens": int(len(chosen)), "share": (np.bincount(chosen, minlength=num_experts) / len(chosen)).tolist()}
    return table


def routing_by_attribute(model_dir: str, world_dir: str, max_samples: int, batch_size: int = 50) -> dict:
    """Per MoE layer of each tower, the share of tokens of each attribute value whose first choice
    is each expert, over the first max_samples held-out scenes. Vision: patch tokens labelled by the
    object they show (patch_owners); text: the caption's colour and shape words."""
    import torch

    from clipmoe_encoder.dmu.models import load_model, load_preprocessors

    scenes = W.read_scenes(world_dir, "test")[:max_samples]
    tokenizer, processor = load_preprocessors(model_dir)
    model = load_model(model_dir).eval()
    vcfg, tcfg = model.config.vision_config, model.config.text_config
    E = vcfg.num_experts
    choices = {"vision": [], "text": []}
    for start in range(0, len(scenes), batch_size):
        batch = scenes[start:start + batch_size]
        pixels = processor(images=[Image.open(os.path.join(world_dir, s["image"])).convert("RGB") for s in batch],
                           return_tensors="pt")["pixel_values"]
        tokens = tokenizer([s["caption"] for s in batch], padding="max_length", truncation=True,
                           max_length=tcfg.max_position_embeddings, return_tensors="pt")
        with torch.no_grad():
            out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels,
                        output_router_logits=True)
        for tower, tout, seq in (("vision", out.vision_model_output, pixels.shape[0]),
                                 ("text", out.text_model_output, tokens["input_ids"].shape[0])):
            layers = [logits.view(seq, -1, E).argmax(-1) for logits in tout.router_logits]  # (batch, seq) per layer
            choices[tower].append(torch.stack(layers, 1).numpy())  # (batch, layers, seq)
        choices.setdefault("ids", []).append(tokens["input_ids"].numpy())
    vision = np.concatenate(choices["vision"])
    text = np.concatenate(choices["text"])
    ids = np.concatenate(choices["ids"])
    words = [tokenizer.convert_ids_to_tokens(row.tolist()) for row in ids]
    result = {"num_experts": E, "samples": len(scenes), "vision": {}, "text": {}}
    for attribute in ("shape", "colour"):
        values = [v for s in scenes for v in token_values(s, attribute, vcfg.image_size, vcfg.patch_size)]
        result["vision"][attribute] = [routing_table(vision[:, layer, :].reshape(-1), values, E)
                                       for layer in range(vision.shape[1])]
        word_values = [TEXT_WORDS[attribute].get(w) for row in words for w in row]
        result["text"][attribute] = [routing_table(text[:, layer, :].reshape(-1), word_values, E)
                                     for layer in range(text.shape[1])]
    result["layers"] = {"vision": list(vcfg.moe_layer_indices), "text": list(tcfg.moe_layer_indices)}
    return result


# ---------------------------------------------------------------------------------------------
# each expert alone (the paper's Table 1)

def extract_experts(model_dir: str, out_dir: str) -> list[str]:
    """Every expert of a CLIP-MoE directory saved as a dense CLIP directory out_dir/expert<j>
    (clipmoe_encoder's extract-expert: the CLIP-MoE with every token routed to expert j)."""
    from clipmoe_encoder.dmu.models import load_model, load_preprocessors, save_model_dir
    from clipmoe_encoder.expert_extraction import extract_expert

    tokenizer, processor = load_preprocessors(model_dir)
    model = load_model(model_dir)
    paths = []
    for j in range(model.config.vision_config.num_experts):
        path = os.path.join(out_dir, f"expert{j}")
        if not os.path.isfile(os.path.join(path, "config.json")):  # save_model_dir is atomic: a present dir is complete
            save_model_dir(extract_expert(model, j), tokenizer, processor, path)
        paths.append(path)
    return paths
