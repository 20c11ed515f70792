"""The DMU recipe end to end, resumable, plus the two baselines on the same data and budget.

Run folder layout (every piece is written atomically and reused on a rerun):
  settings.json                 the settings of the run and fingerprints of its base and data (runfolder.py): a
                                rerun whose results-affecting settings, base or data differ is refused
  features/stage<s>/            embeddings of the stage-s model (stage 0 = base) over the training set:
                                image.npy, text.npy (N, D) fp16 and valid.npy, read memory-mapped
  clusters/labels_stage<s>.safetensors  accumulated cluster labels after clustering stage s
  mcl<s>/                       MCL stage s: log.jsonl, checkpoints/, model/ (dense CLIP), done.json
  router/                       router stage: log.jsonl, checkpoints/, done.json
  final/                        the CLIP-MoE (save_pretrained + tokenizer + image processor)
  report.json, report.md

Budget of the baselines: DMU makes (num_experts - 1) * mcl_epochs + router_epochs passes over the
training set at one global batch size, so each baseline trains for that many epochs of ordinary
shuffled batches at the same global batch size. DMU's MCL stages drop the samples that do not fill
a cluster batch (reported), so a baseline sees at least as many samples as DMU does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np
import torch

from ..errors import CLIPMoEError
from ..upcycle import assemble_experts, upcycle
from . import runfolder
from .clustering import cluster_features
from .data import ImageTextDataset, load_records
from .distributed import main_process_alone, make_accelerator
from .features import compute_features, has_features, load_features, load_tensors, save_features, save_tensors
from .models import (
    load_model,
    load_preprocessors,
    named_dense_ffn_parameters,
    save_model_dir,
    selected_blocks,
    set_frozen_logit_scale,
    text_length,
    tower_depth,
)
from .report import write_report
from .routing import collect_routing
from .settings import DMUSettings, StageSpec
from .trainer import finish_stage, read_done, train_stage, write_done

BASELINES = ("direct-ft", "upcycling")


def _check_base_dir(base_dir):
    """The base is a dense two-tower CLIP directory, told from its config.json before any weight is read."""
    from ..checkpoint_io import read_config_json

    base_dir = os.fspath(base_dir)
    model_type = read_config_json(base_dir).get("model_type")
    if model_type != "clip":
        raise CLIPMoEError(f"--base {base_dir}: the base must be a dense two-tower CLIP (config.json 'model_type' 'clip'), "
                           f"got {model_type!r}")
    return base_dir


def _check_enough_data(data_path, records, settings):
    """Enough pairs for one global batch and for the clusters, or every stage would fail after the features."""
    need = max(settings.batch_size, settings.clusters_per_modality)
    if len(records) < need:
        raise CLIPMoEError(f"{data_path}: {len(records)} usable image-caption pair(s), fewer than --batch-size "
                           f"{settings.batch_size} / --clusters-per-modality {settings.clusters_per_modality} need ({need})")


def _prepare(base_dir, data_path, out_dir, settings, image_root, extra, restart=False, overwrite=False):
    """Every check that can fail runs before the model is loaded or anything is written: settings,
    the run folder, the data (every image stat'ed), the base's config, and the fingerprints against
    a previous run in the folder. Then the folder is claimed (settings.json written) and the base loaded."""
    settings.validate()
    out_dir = os.fspath(out_dir)
    runfolder.check_folder(out_dir, overwrite)
    records, data_report = load_records(data_path, image_root, settings.data_format, settings.skip_bad)
    _check_enough_data(data_path, records, settings)
    base_dir = _check_base_dir(base_dir)
    saved = runfolder.read_saved(out_dir) or {}
    current = dict(dataclasses.asdict(settings), **extra, base=os.path.abspath(base_dir), data=os.path.abspath(data_path),
                   base_fingerprint=runfolder.base_fingerprint(base_dir, saved.get("base_fingerprint")),
                   data_fingerprint=runfolder.data_fingerprint(data_path, records, image_root))
    tokenizer, processor = load_preprocessors(base_dir)  # a base saved without them is found before the folder is claimed
    accelerator = make_accelerator(settings.mixed_precision)
    runfolder.claim(out_dir, current, restart, overwrite)
    base = load_model(base_dir)
    set_frozen_logit_scale(base, settings.logit_scale)
    dataset = ImageTextDataset(records, processor, tokenizer, text_length(base), settings.skip_bad, settings.cache_samples)
    return accelerator, out_dir, base, tokenizer, processor, dataset, data_report


def _stage_spec(settings, **stage):
    """A stage's StageSpec: what every stage takes from the settings, plus the stage's own fields."""
    common = dict(batch_size=settings.batch_size, lr=settings.lr_mcl, weight_decay=settings.wd_mcl, warmup_steps=settings.warmup_steps,
                  label_smoothing=settings.label_smoothing, logit_scale=settings.logit_scale, save_every=settings.save_every,
                  log_every=settings.log_every, num_workers=settings.num_workers, grad_checkpointing=settings.grad_checkpointing,
                  max_grad_norm=settings.max_grad_norm, skip_bad=settings.skip_bad)
    return StageSpec(**dict(common, **stage)).validate()


def _mcl_spec(settings, stage):
    return _stage_spec(settings, stage_name=f"mcl{stage}", trainable="ffn", towers=settings.mcl_towers, last_k_blocks=settings.last_k_blocks,
                       epochs=settings.mcl_epochs, seed=settings.seed + stage, small_clusters=settings.small_clusters)


def _moe_spec(settings, name, trains, epochs, seed):
    return _stage_spec(settings, stage_name=name, trainable=trains, epochs=epochs, seed=seed, lr_router=settings.lr_router,
                       wd_router=settings.wd_router, aux_loss=True)


def _moe_layout(settings, base):
    """moe_layers / text_moe_layers: every block, or the last K; no text MoE when only vision FFNs trained."""
    vision = settings.last_k_blocks  # None = every block
    if settings.mcl_towers == "vision":
        text = []
    elif settings.last_k_blocks is None:
        text = "same"
    else:
        text = min(settings.last_k_blocks, tower_depth(base, "text"))
    return vision, text


def _moe_kwargs(settings):
    return {"expert_dropout": settings.expert_dropout, "router_aux_loss_coef": settings.lb_coef,
            "router_aux_loss_count": settings.aux_loss_count, "router_z_loss_coef": settings.z_coef}


def _ffn_only(stage_model, base, last_k_blocks=None):
    """A stage model whose every tensor but the FFNs (of the last K blocks of each tower, all by
    default) is the base's, in fp32: only the FFNs that become experts are taken from an MCL stage,
    so a trained logit scale (logit_scale=None), the bf16 copy a DeepSpeed run saved, or FFNs trained
    in blocks left dense cannot make the checkpoints disagree outside the experts."""
    stage_model = stage_model.float()
    kept = {id(p) for block in selected_blocks(base, "both", last_k_blocks) for p in block.parameters()}
    ffn = {name for name, p in named_dense_ffn_parameters(base) if id(p) in kept}
    state = {k: v for k, v in base.state_dict().items() if k not in ffn}
    stage_model.load_state_dict(state, strict=False)
    return stage_model


def _cluster_stats(labels):
    labels = np.asarray(labels)
    used = labels[labels >= 0]
    sizes = np.bincount(np.unique(used, return_inverse=True)[1]) if used.size else np.zeros(0, dtype=int)
    return {"nonempty_clusters": len(sizes), "largest": int(sizes.max()) if sizes.size else 0,
            "smallest": int(sizes.min()) if sizes.size else 0, "unlabelled": int((labels < 0).sum())}


def _stage_labels(accelerator, out_dir, s, model_dir_or_model, dataset, previous, settings, timings):
    """Accumulated labels after clustering with the stage-s model (cached on disk).
    Every rank embeds its shard; the main process alone stores the features and clusters while the
    others wait in main_process_alone (a long-timeout barrier, see distributed.py)."""
    labels_path = os.path.join(out_dir, "clusters", f"labels_stage{s}.safetensors")
    if not os.path.isfile(labels_path):
        t0 = time.time()
        features_dir = os.path.join(out_dir, "features", f"stage{s}")
        feats = None
        if not has_features(features_dir):
            model = load_model(model_dir_or_model) if isinstance(model_dir_or_model, str) else model_dir_or_model
            feats = compute_features(accelerator, model, dataset, settings.feature_batch_size, settings.num_workers, desc=f"features{s}")
        with main_process_alone(accelerator):
            if accelerator.is_main_process:
                if feats is not None:
                    os.makedirs(os.path.dirname(features_dir), exist_ok=True)
                    save_features(feats, features_dir)
                del feats
                feats = load_features(features_dir)  # memory-mapped: pages in as k-means reads them
                timings[f"features{s}"] = time.time() - t0
                t1 = time.time()
                k = settings.clusters_per_modality
                labels = cluster_features(feats["image"], feats["text"], feats["valid"], previous, k, k, settings.seed + 100 * s,
                                          progress=f"clusters{s}")
                os.makedirs(os.path.dirname(labels_path), exist_ok=True)
                save_tensors({"labels": torch.from_numpy(labels)}, labels_path)
                timings[f"clustering{s}"] = time.time() - t1
                with open(os.path.join(out_dir, "timings.json"), "w") as f:  # survives a kill before the report
                    json.dump(timings, f)
    return load_tensors(labels_path)["labels"].numpy()


def run_dmu(base_dir, data_path, out_dir, settings: DMUSettings | None = None, image_root=None, restart: bool = False,
            overwrite: bool = False) -> str:
    """Diversified Multiplet Upcycling from a dense CLIP directory; returns the CLIP-MoE directory.

    Stages: features + k-means of the base -> MCL stage 1 on cluster batches -> features + k-means
    of stage 1 (labels accumulate) -> ... -> MCL stage N-1 -> assemble (expert 0 = base FFN, expert s
    = stage-s FFN) -> router training with InfoNCE + load balancing -> out_dir/final + report.
    Rerunning the same call resumes: finished stages are skipped, a stage resumes from its last
    checkpoint, cached features and labels are reused; a rerun whose settings, base or data changed is
    refused (`restart=True` discards the folder's run instead). A non-empty folder that holds no run is
    refused unless `overwrite`.
    """
    settings = settings or DMUSettings()
    accelerator, out_dir, base, tokenizer, processor, dataset, data_report = _prepare(base_dir, data_path, out_dir, settings, image_root, {"pipeline": "dmu"},
                                                                                       restart, overwrite)
    final_dir = os.path.join(out_dir, "final")
    timings_path = os.path.join(out_dir, "timings.json")
    timings = {}
    if os.path.isfile(timings_path):  # kept across resumes
        with open(timings_path) as f:
            timings = json.load(f)
    stages, clusters = {}, {}
    labels = None
    stage_models = [base]
    for s in range(settings.num_experts - 1):
        source = base if s == 0 else os.path.join(out_dir, f"mcl{s}", "model")
        stage_dir = os.path.join(out_dir, f"mcl{s + 1}")
        done = read_done(stage_dir)
        labels = _stage_labels(accelerator, out_dir, s, source, dataset, labels, settings, timings)  # reads the cached labels when present
        clusters[f"stage{s}"] = _cluster_stats(labels)
        if done is None:
            start = base_dir if settings.restart_from_base or s == 0 else os.path.join(out_dir, f"mcl{s}", "model")
            model = load_model(start)
            torch.manual_seed(settings.seed + s + 1)
            summary = train_stage(accelerator, model, dataset, _mcl_spec(settings, s + 1), stage_dir, labels)
            finish_stage(accelerator, summary, stage_dir, tokenizer, processor)
            done = read_done(stage_dir)
        stages[f"mcl{s + 1}"] = done
        stage_models.append(os.path.join(stage_dir, "model"))

    router_dir = os.path.join(out_dir, "router")
    done = read_done(router_dir)
    if done is None or not os.path.isdir(final_dir):
        _assemble_and_route(accelerator, settings, base, stage_models[1:], dataset, router_dir, final_dir, tokenizer, processor)
        done = read_done(router_dir)
    stages["router"] = done
    with main_process_alone(accelerator):  # the routing statistics may run long on a large --routing-stats-samples
        if accelerator.is_main_process:
            with open(timings_path, "w") as f:
                json.dump(timings, f)
            routing = routing_statistics(final_dir, data_path, image_root, settings.routing_stats_samples, _dataset=dataset)
            write_report(out_dir, "dmu", settings, data_report, stages, clusters, timings, routing)
    return final_dir


def run_dmu_last_blocks(dmu_dir, base_dir, data_path, out_dir, last_k_blocks: int, settings: DMUSettings | None = None,
                        image_root=None, restart: bool = False, overwrite: bool = False) -> str:
    """The cheaper CLIP-MoE from a finished DMU run's MCL stages: experts only in the last
    `last_k_blocks` blocks of each tower (the earlier blocks keep the base FFN), its routers trained
    like DMU's router stage. `settings` must be the DMU run's. Returns out_dir/final; resumable like run_dmu."""
    settings = dataclasses.replace(settings or DMUSettings(), last_k_blocks=last_k_blocks)
    stage_models = sorted((d for d in os.listdir(dmu_dir) if d.startswith("mcl") and d[3:].isdigit()), key=lambda d: int(d[3:]))
    stage_models = [os.path.join(dmu_dir, d, "model") for d in stage_models]
    if len(stage_models) != settings.num_experts - 1 or not all(read_done(os.path.dirname(m)) for m in stage_models):
        raise CLIPMoEError(f"{dmu_dir}: expected {settings.num_experts - 1} finished MCL stages (mcl1/..), found {len(stage_models)}")
    accelerator, out_dir, base, tokenizer, processor, dataset, _ = _prepare(
        base_dir, data_path, out_dir, settings, image_root, {"pipeline": "dmu-last-blocks", "dmu_dir": os.path.abspath(dmu_dir)},
        restart, overwrite)
    router_dir, final_dir = os.path.join(out_dir, "router"), os.path.join(out_dir, "final")
    if read_done(router_dir) is None or not os.path.isdir(final_dir):
        _assemble_and_route(accelerator, settings, base, stage_models, dataset, router_dir, final_dir, tokenizer, processor)
    return final_dir


def _assemble_and_route(accelerator, settings, base, stage_model_dirs, dataset, router_dir, final_dir, tokenizer, processor):
    """DMU's last step: expert 0 = the base FFN, expert s = MCL stage s's FFN, in the blocks
    settings.last_k_blocks names (all by default); then the router stage; the CLIP-MoE saved to final_dir."""
    vision_layers, text_layers = _moe_layout(settings, base)
    experts = [base] + [_ffn_only(load_model(m), base, settings.last_k_blocks) for m in stage_model_dirs]
    model = assemble_experts(experts, settings.top_k, vision_layers, text_moe_layers=text_layers, seed=settings.seed, **_moe_kwargs(settings))
    del experts
    torch.manual_seed(settings.seed + settings.num_experts)
    summary = train_stage(accelerator, model, dataset, _moe_spec(settings, "router", settings.router_trains, settings.router_epochs,
                                                                     settings.seed + settings.num_experts), router_dir)
    if accelerator.is_main_process:
        save_model_dir(summary["model"], tokenizer, processor, final_dir)
    accelerator.wait_for_everyone()
    write_done(accelerator, router_dir, summary)


def run_baseline(kind: str, base_dir, data_path, out_dir, settings: DMUSettings | None = None, image_root=None,
                 restart: bool = False, overwrite: bool = False) -> str:
    """A baseline of the paper's table on the same data and budget; returns its model directory.

    kind "direct-ft": the dense CLIP fine-tuned (all parameters, or the FFNs with
    settings.direct_ft_trainable="ffn") at lr_mcl / wd_mcl.
    kind "upcycling": sparse upcycling, the base FFN copied to every expert (same MoE layout as
    DMU), routers added, then routers + experts trained (settings.upcycling_trains) with the
    router-stage losses and learning rates.
    Budget: (num_experts - 1) * mcl_epochs + router_epochs epochs at batch_size (see module doc).
    Writes out_dir/<kind>/{log.jsonl, checkpoints/, model/, report.json, report.md}; resumable.
    """
    if kind not in BASELINES:
        raise CLIPMoEError(f"baseline kind must be one of {', '.join(BASELINES)}, got {kind!r}")
    settings = settings or DMUSettings()
    stage_dir = os.path.join(os.fspath(out_dir), kind)
    accelerator, _, base, tokenizer, processor, dataset, data_report = _prepare(base_dir, data_path, stage_dir, settings, image_root, {"pipeline": kind},
                                                                                      restart, overwrite)
    epochs = (settings.num_experts - 1) * settings.mcl_epochs + settings.router_epochs
    done = read_done(stage_dir)
    if done is None:
        torch.manual_seed(settings.seed)
        if kind == "direct-ft":
            model = base
            spec = dataclasses.replace(_mcl_spec(settings, 0), stage_name=kind, trainable=settings.direct_ft_trainable, towers="both",
                                       last_k_blocks=None, epochs=epochs, seed=settings.seed)
        else:
            vision_layers, text_layers = _moe_layout(dataclasses.replace(settings, mcl_towers="both"), base)
            model = upcycle(base, settings.num_experts, settings.top_k, vision_layers, text_moe_layers=text_layers, seed=settings.seed, **_moe_kwargs(settings))
            spec = _moe_spec(settings, kind, settings.upcycling_trains, epochs, settings.seed)
        summary = train_stage(accelerator, model, dataset, spec, stage_dir)
        finish_stage(accelerator, summary, stage_dir, tokenizer, processor)
        done = read_done(stage_dir)
    model_dir = os.path.join(stage_dir, "model")
    with main_process_alone(accelerator):
        if accelerator.is_main_process:
            routing = routing_statistics(model_dir, data_path, image_root, settings.routing_stats_samples, _dataset=dataset) if kind == "upcycling" else None
            write_report(stage_dir, kind, settings, data_report, {kind: done}, {}, {}, routing)
    return model_dir


def routing_statistics(model_dir, data_path, image_root=None, max_samples: int = 256, batch_size: int = 32, device=None,
                       _dataset=None) -> dict:
    """Routing of a CLIP-MoE directory over the first max_samples pairs of a data file.

    Returns {"num_experts", "top_k", "samples", "vision": {...}, "text": {...}} where each tower has,
    per MoE layer (lists aligned with "layers"): "first_choice" and "second_choice" (fraction of
    tokens whose 1st / 2nd choice is each expert), "load" (share of all top-k assignments per
    expert), "entropy" (mean router entropy in nats; "max_entropy" = ln E). Text padding excluded.
    device: where to run (default: CUDA when available).
    """
    from ..checkpoint_io import read_config_json

    # config, data and preprocessors are checked before the weights are read
    if read_config_json(model_dir).get("model_type") != "clipmoe":
        raise CLIPMoEError(f"{model_dir}: routing statistics need a two-tower CLIP-MoE (model_type 'clipmoe')")
    if _dataset is None:
        records, _ = load_records(data_path, image_root, skip_bad=True)
        tokenizer, processor = load_preprocessors(model_dir)
    model = load_model(model_dir)
    if _dataset is None:
        _dataset = ImageTextDataset(records[:max_samples], processor, tokenizer, text_length(model), skip_bad=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return collect_routing(model, _dataset, max_samples, batch_size, device)
