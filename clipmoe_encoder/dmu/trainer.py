"""One contrastive training stage: freeze all but the chosen parameters, train on planned global
batches (cluster-restricted for MCL, shuffled otherwise), log, checkpoint, resume.

Determinism: the data order is a pure function of (seed, epoch, step) (see sampler.py) and the RNG
state is checkpointed, so a run killed and resumed ends bitwise equal to an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from ..errors import CLIPMoEError
from .checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint
from .distributed import is_deepspeed, make_accelerator
from ..moe import aux_losses, router_parameters, summed_over_processes
from .losses import contrastive_loss
from .models import (
    is_moe,
    load_model,
    load_preprocessors,
    save_model_dir,
    select_trainable,
    set_frozen_logit_scale,
    text_length,
)
from .sampler import GlobalBatchSampler


@dataclass
class StageSpec:
    """Everything one training stage needs (the pipeline fills it from DMUSettings)."""

    name: str = "train"
    trainable: str = "all"
    towers: str = "both"
    last_k_blocks: int | None = None
    epochs: int = 1
    max_steps: int | None = None  # stop after this many optimizer steps (budget matching)
    global_batch: int = 800
    lr: float = 1e-5
    weight_decay: float = 0.2
    lr_router: float | None = None  # routers get their own group when set
    wd_router: float = 0.01
    warmup_steps: int = 200
    label_smoothing: float = 0.1
    logit_scale: float | None = 100.0  # frozen multiplier; None = use and train the model's
    aux_loss: bool = False  # add the MoE's load-balancing (+ z) loss, weighted as the model's config says
    save_every: int = 500
    seed: int = 0
    num_workers: int = 0
    grad_checkpointing: bool = False
    small_clusters: str = "drop"
    max_grad_norm: float | None = None
    skip_bad: bool = False


def _optimizer(model, named_params, spec: StageSpec):
    """AdamW; no weight decay on biases and norms; routers in their own group when lr_router is set."""
    routers = {id(p) for p in router_parameters(model)}
    groups = {}
    for name, p in named_params:
        router = spec.lr_router is not None and id(p) in routers
        decay = p.ndim >= 2 and name != "logit_scale"
        lr = spec.lr_router if router else spec.lr
        wd = (spec.wd_router if router else spec.weight_decay) if decay else 0.0
        groups.setdefault((router, lr, wd), []).append(p)
    param_groups = [{"params": ps, "lr": lr, "weight_decay": wd, "name": "router" if r else "main"} for (r, lr, wd), ps in groups.items()]
    return torch.optim.AdamW(param_groups)


def global_batch_aux_loss(out, config):
    """The model's auxiliary loss over the GLOBAL batch: each layer's routing statistics (from the
    model's forward) summed over the processes, then the model's own loss and coefficients, so a
    W-process run optimises exactly the 1-process objective (the official code instead pools layers
    and divides by the world size). Returns (aux, load_balancing, z)."""
    stats = summed_over_processes(out.vision_model_output.routing_stats + out.text_model_output.routing_stats)
    return aux_losses(stats, config.vision_config)


def routing_entropy(router_logits, token_mask=None) -> float:
    """Mean over MoE layers of the mean per-token entropy (nats) of the router distribution."""
    if not router_logits:
        return float("nan")
    values = []
    for logits in router_logits:
        p = torch.softmax(logits.detach().float(), dim=-1)
        h = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)
        if token_mask is not None and h.shape[0] == token_mask.numel():
            w = token_mask.reshape(-1).float()
            values.append(float((h * w).sum() / w.sum().clamp_min(1)))
        else:
            values.append(float(h.mean()))
    return float(np.mean(values))


def layer_routing(router_logits, top_k: int, token_mask=None) -> dict:
    """Per MoE layer of this rank's batch: router entropy (nats) and each expert's share of the
    top-k assignments (load), padding excluded."""
    entropy, load = [], []
    for logits in router_logits:
        p = torch.softmax(logits.detach().float(), dim=-1)
        if token_mask is not None and p.shape[0] == token_mask.numel():
            p = p[token_mask.reshape(-1).bool()]
        entropy.append(round(float(-(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean()), 5))
        chosen = p.topk(top_k, dim=-1).indices.reshape(-1)
        load.append([round(x, 5) for x in (torch.bincount(chosen, minlength=p.shape[1]).float() / max(chosen.numel(), 1)).tolist()])
    return {"entropy": entropy, "load": load}


def _truncate_log(path, last_step):
    """After a resume, drop log lines written after the checkpoint we resume from."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        lines = [ln for ln in f if ln.strip() and json.loads(ln).get("step", 0) <= last_step]
    with open(path, "w") as f:
        f.writelines(lines)


def train_stage(accelerator, model, dataset, spec: StageSpec, stage_dir: str, labels=None) -> dict:
    """Train `model` in place (unwrapped model returned in the summary's "model") and checkpoint into
    stage_dir/checkpoints. Returns a summary: steps, losses, sampler stats, seconds."""
    os.makedirs(stage_dir, exist_ok=True)
    ckpt_dir = os.path.join(stage_dir, "checkpoints")
    log_path = os.path.join(stage_dir, "log.jsonl")
    set_frozen_logit_scale(model, spec.logit_scale)
    named = select_trainable(model, spec.trainable, spec.towers, spec.last_k_blocks, train_logit_scale=spec.logit_scale is None)
    trainable_names = [n for n, _ in named]
    if spec.grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    sampler = GlobalBatchSampler(len(dataset), spec.global_batch, spec.seed, accelerator.process_index,
                                 accelerator.num_processes, labels, spec.small_clusters)
    steps_per_epoch = len(sampler.plan.batches)
    if steps_per_epoch == 0:
        raise CLIPMoEError(f"stage {spec.name}: no full global batch of {spec.global_batch} samples ({sampler.plan.stats}); lower the batch size"
                           + (" or use small_clusters='merge'" if labels is not None else ""))
    total_steps = steps_per_epoch * spec.epochs
    if spec.max_steps is not None:
        total_steps = min(total_steps, spec.max_steps) if spec.epochs else spec.max_steps
    epochs_needed = math.ceil(total_steps / steps_per_epoch)
    optimizer = _optimizer(model, named, spec)
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(spec.warmup_steps, total_steps), total_steps)
    if is_deepspeed(accelerator):  # ZeRO needs the per-GPU micro batch; we build our own loader
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = sampler.local_batch
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    unwrapped = accelerator.unwrap_model(model)
    moe = is_moe(unwrapped)

    step, counters = 0, {"invalid_samples": 0}
    resume_from = latest_checkpoint(ckpt_dir)
    if resume_from:
        meta = load_checkpoint(accelerator, resume_from, model, optimizer, scheduler)
        step, counters = meta["step"], meta.get("counters", counters)
        if accelerator.is_main_process:
            _truncate_log(log_path, step)
    elif accelerator.is_main_process and os.path.exists(log_path):
        os.remove(log_path)

    model.train()
    start_time, first_step, losses = time.time(), step, []
    bar = tqdm(total=total_steps, initial=step, desc=spec.name, disable=not accelerator.is_main_process, dynamic_ncols=True)
    while step < total_steps:
        epoch, position = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch)
        sampler.skip(position)
        # A private generator: creating a loader iterator draws a seed, and drawing it from the global
        # RNG would shift the dropout stream of a resumed run against an uninterrupted one.
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=spec.num_workers,
                                             pin_memory=accelerator.device.type == "cuda",
                                             generator=torch.Generator().manual_seed(spec.seed + epoch))
        for batch in loader:
            t0 = time.time()
            batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
            with accelerator.autocast():
                kwargs = {"output_router_logits": True} if moe else {}
                out = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], attention_mask=batch["attention_mask"], **kwargs)
            scale = spec.logit_scale if spec.logit_scale is not None else unwrapped.logit_scale.exp().clamp(max=100.0)
            loss, logged = contrastive_loss(out.image_embeds.float(), out.text_embeds.float(), scale, spec.label_smoothing, batch["valid"])
            total = loss
            if moe:
                aux, lb, z = global_batch_aux_loss(out, unwrapped.config)
                if spec.aux_loss:
                    total = loss + aux
            accelerator.backward(total)
            if spec.max_grad_norm:
                accelerator.clip_grad_norm_([p for _, p in named], spec.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            invalid = int(accelerator.reduce((~batch["valid"]).sum(), "sum")) if accelerator.num_processes > 1 else int((~batch["valid"]).sum())
            counters["invalid_samples"] += invalid
            losses.append(float(logged))
            if accelerator.is_main_process:
                row = {"step": step, "epoch": epoch, "loss": losses[-1], "lr": scheduler.get_last_lr()[0],
                       "samples_per_s": spec.global_batch / max(time.time() - t0, 1e-9)}
                for g in optimizer.param_groups:
                    if g.get("name") == "router":
                        row["lr_router"] = g["lr"]
                if moe:
                    row["aux_loss"] = float(aux.detach())
                    row["load_balancing_loss"] = float(lb.detach())
                    row["router_z_loss"] = float(z.detach())
                    row["routing_entropy_vision"] = routing_entropy(out.vision_model_output.router_logits)
                    row["routing_entropy_text"] = routing_entropy(out.text_model_output.router_logits, batch["attention_mask"])
                    row["per_layer"] = {
                        "vision": layer_routing(out.vision_model_output.router_logits, unwrapped.config.vision_config.num_experts_per_tok),
                        "text": layer_routing(out.text_model_output.router_logits, unwrapped.config.text_config.num_experts_per_tok,
                                              batch["attention_mask"]),
                    }
                if invalid:
                    row["invalid_samples"] = invalid
                with open(log_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
            bar.update(1)
            if step % spec.save_every == 0 or step == total_steps:
                save_checkpoint(accelerator, ckpt_dir, step, model, optimizer, scheduler, trainable_names,
                                {"counters": counters, "spec": asdict(spec)})
            if step >= total_steps:
                break
    bar.close()
    if spec.grad_checkpointing:
        unwrapped.gradient_checkpointing_disable()
    for p in unwrapped.parameters():
        p.requires_grad_(False)
    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(model)
    accelerator.free_memory()
    return {
        "model": model,
        "steps": total_steps,
        "steps_per_epoch": steps_per_epoch,
        "epochs": epochs_needed,
        "resumed_from_step": first_step if resume_from else None,
        "final_loss": losses[-1] if losses else _last_logged_loss(log_path),
        "mean_loss_last_epoch_run": float(np.mean(losses[-steps_per_epoch:])) if losses else None,
        "trainable_parameters": int(sum(p.numel() for _, p in named)),
        "sampler": sampler.plan.stats,
        "invalid_samples": counters["invalid_samples"],
        "seconds": time.time() - start_time,
    }


def _last_logged_loss(path):
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        rows = [json.loads(ln) for ln in f if ln.strip()]
    return rows[-1]["loss"] if rows else None


def read_done(stage_dir):
    path = os.path.join(stage_dir, "done.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return None


def write_done(accelerator, stage_dir, summary):
    if accelerator.is_main_process:
        tmp = os.path.join(stage_dir, "done.json.tmp")
        with open(tmp, "w") as f:
            json.dump({k: v for k, v in summary.items() if k != "model"}, f, indent=1)
        os.replace(tmp, os.path.join(stage_dir, "done.json"))
    accelerator.wait_for_everyone()


def finish_stage(accelerator, summary, stage_dir, tokenizer, image_processor) -> str:
    """Save the stage's model (with tokenizer + processor) and mark the stage done."""
    model_dir = os.path.join(stage_dir, "model")
    if accelerator.is_main_process:
        save_model_dir(summary["model"], tokenizer, image_processor, model_dir)
    accelerator.wait_for_everyone()
    write_done(accelerator, stage_dir, summary)
    return model_dir


def train_contrastive(model_dir_or_model, data_path, out_dir, trainable: str = "all", epochs: int = 1, batch_size: int = 32,
                      lr: float = 1e-5, weight_decay: float = 0.2, warmup_steps: int = 0, label_smoothing: float = 0.1,
                      logit_scale: float | None = 100.0, image_root=None, tokenizer=None, image_processor=None, seed: int = 0,
                      save_every: int = 500, num_workers: int = 0, mixed_precision: str = "auto", grad_checkpointing: bool = False,
                      skip_bad: bool = False, stage_name: str = "train", lr_router: float | None = None, aux_loss: bool = True,
                      max_steps: int | None = None) -> str:
    """Train a dense CLIP or a CLIP-MoE contrastively on a data file; returns the saved model directory.

    model_dir_or_model: a directory (dense 'clip' or 'clipmoe', with tokenizer and image processor)
    or a model object (then pass tokenizer= and image_processor=).
    trainable: "all" | "ffn" | "router" | "router+experts". batch_size is the GLOBAL batch.
    logit_scale: frozen multiplier (100 as in the paper) or None to use and train the model's.
    Logs to <out_dir>/<stage_name>/log.jsonl; the model goes to <out_dir>/<stage_name>/model.
    Rerunning resumes from the last checkpoint; a finished run returns at once.
    """
    from .data import ImageTextDataset, load_records

    stage_dir = os.path.join(os.fspath(out_dir), stage_name)
    if read_done(stage_dir):
        return os.path.join(stage_dir, "model")
    if isinstance(model_dir_or_model, (str, os.PathLike)):
        model = load_model(model_dir_or_model)
        if tokenizer is None or image_processor is None:
            tok, proc = load_preprocessors(model_dir_or_model)
            tokenizer, image_processor = tokenizer or tok, image_processor or proc
    else:
        model = model_dir_or_model
        if tokenizer is None or image_processor is None:
            raise CLIPMoEError("train_contrastive: pass tokenizer= and image_processor= with a model object")
    records, _ = load_records(data_path, image_root, skip_bad=skip_bad)
    dataset = ImageTextDataset(records, image_processor, tokenizer, text_length(model), skip_bad)
    spec = StageSpec(name=stage_name, trainable=trainable, epochs=epochs, global_batch=batch_size, lr=lr,
                     weight_decay=weight_decay, warmup_steps=warmup_steps, label_smoothing=label_smoothing,
                     logit_scale=logit_scale, seed=seed, save_every=save_every, num_workers=num_workers,
                     grad_checkpointing=grad_checkpointing, skip_bad=skip_bad, lr_router=lr_router,
                     aux_loss=aux_loss, max_steps=max_steps)
    accelerator = make_accelerator(mixed_precision)
    torch.manual_seed(seed)
    summary = train_stage(accelerator, model, dataset, spec, stage_dir)
    return finish_stage(accelerator, summary, stage_dir, tokenizer, image_processor)
