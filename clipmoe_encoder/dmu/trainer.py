"""One contrastive training stage: freeze all but the chosen parameters, train on planned global
batches (cluster-restricted for MCL, shuffled otherwise), log, checkpoint, resume.

`train_stage` is three parts: `_setup` (trainable parameters, sampler, optimizer, resume),
`_train_step` (forward, losses, backward, optimizer step) and `_log_row` (one log line; the per-layer
routing statistics at step 1 and every `log_every` steps, read from the device once).

Determinism: the data order is a pure function of (seed, epoch, step) (see sampler.py) and the RNG
state is checkpointed, so a run killed and resumed ends bitwise equal to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from ..errors import CLIPMoEError
from ..moe import aux_losses, router_parameters, summed_over_processes
from .checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint
from .distributed import is_deepspeed, make_accelerator
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
from .settings import StageSpec


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
    and divides by the world size). Returns (aux, load_balancing, z, the global statistics)."""
    stats = summed_over_processes(out.vision_model_output.routing_stats + out.text_model_output.routing_stats)
    return (*aux_losses(stats, config.vision_config), stats)


def _truncate_log(path, last_step):
    """After a resume, drop log lines written after the checkpoint we resume from."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        lines = [ln for ln in f if ln.strip() and json.loads(ln).get("step", 0) <= last_step]
    with open(path, "w") as f:
        f.writelines(lines)


@dataclasses.dataclass
class _Run:
    """What `_setup` prepares for the loop of one stage."""

    accelerator: object
    model: torch.nn.Module  # as prepared by accelerate (possibly wrapped)
    unwrapped: torch.nn.Module
    named: list  # [(name, parameter)] that train
    optimizer: torch.optim.Optimizer
    scheduler: object
    sampler: GlobalBatchSampler
    total_steps: int
    steps_per_epoch: int
    ckpt_dir: str
    log_path: str
    step: int = 0
    counters: dict = dataclasses.field(default_factory=lambda: {"invalid_samples": 0})
    resumed: bool = False

    @property
    def moe(self) -> bool:
        return is_moe(self.unwrapped)


def _setup(accelerator, model, dataset, spec: StageSpec, stage_dir: str, labels) -> _Run:
    os.makedirs(stage_dir, exist_ok=True)
    ckpt_dir = os.path.join(stage_dir, "checkpoints")
    log_path = os.path.join(stage_dir, "log.jsonl")
    set_frozen_logit_scale(model, spec.logit_scale)
    named = select_trainable(model, spec.trainable, spec.towers, spec.last_k_blocks, train_logit_scale=spec.logit_scale is None)
    if spec.grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    sampler = GlobalBatchSampler(len(dataset), spec.batch_size, spec.seed, accelerator.process_index,
                                 accelerator.num_processes, labels, spec.small_clusters)
    steps_per_epoch = len(sampler.plan.batches)
    if steps_per_epoch == 0:
        raise CLIPMoEError(f"stage {spec.stage_name}: no full global batch of {spec.batch_size} samples ({sampler.plan.stats}); lower the batch size"
                           + (" or use small_clusters='merge'" if labels is not None else ""))
    total_steps = steps_per_epoch * spec.epochs
    if spec.max_steps is not None:
        total_steps = min(total_steps, spec.max_steps) if spec.epochs else spec.max_steps
    optimizer = _optimizer(model, named, spec)
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(spec.warmup_steps, total_steps), total_steps)
    if is_deepspeed(accelerator):  # ZeRO needs the per-GPU micro batch; we build our own loader
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = sampler.local_batch
    prepared, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    run = _Run(accelerator, prepared, accelerator.unwrap_model(prepared), named, optimizer, scheduler, sampler, total_steps,
               steps_per_epoch, ckpt_dir, log_path)
    resume_from = latest_checkpoint(ckpt_dir)
    if resume_from:
        meta = load_checkpoint(accelerator, resume_from, prepared, optimizer, scheduler)
        run.step, run.counters, run.resumed = meta["step"], meta.get("counters", run.counters), True
        if accelerator.is_main_process:
            _truncate_log(log_path, run.step)
    elif accelerator.is_main_process and os.path.exists(log_path):
        os.remove(log_path)
    return run


def _train_step(run: _Run, batch: dict, spec: StageSpec) -> dict:
    """One optimizer step; returns the values to log, still on the device."""
    accelerator = run.accelerator
    batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
    with accelerator.autocast():
        kwargs = {"output_router_logits": True} if run.moe else {}
        out = run.model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], attention_mask=batch["attention_mask"], **kwargs)
    scale = spec.logit_scale if spec.logit_scale is not None else run.unwrapped.logit_scale.exp().clamp(max=100.0)
    loss, logged = contrastive_loss(out.image_embeds.float(), out.text_embeds.float(), scale, spec.label_smoothing, batch["valid"])
    values = {"loss": logged.detach()}
    total = loss
    if run.moe:
        aux, lb, z, stats = global_batch_aux_loss(out, run.unwrapped.config)
        if spec.aux_loss:
            total = loss + aux
        values.update(aux_loss=aux.detach(), load_balancing_loss=lb.detach(), router_z_loss=z.detach())
        n_vision = len(out.vision_model_output.routing_stats)
        values["routing"] = {"vision": stats[:n_vision], "text": stats[n_vision:]}
    accelerator.backward(total)
    if spec.max_grad_norm:
        accelerator.clip_grad_norm_([p for _, p in run.named], spec.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    invalid = (~batch["valid"]).sum()
    values["invalid_samples"] = accelerator.reduce(invalid, "sum") if accelerator.num_processes > 1 else invalid
    return values


def _routing_vector(routing: dict) -> torch.Tensor:
    """Per layer of both towers: tokens, entropy sum, then the expert's share of the top-k picks."""
    rows = []
    for stats in routing["vision"] + routing["text"]:
        choices = stats.choices.detach().sum(0)
        rows.append(torch.cat([stats.tokens.detach().reshape(1), stats.entropy_sums.detach().reshape(1),
                               choices / choices.sum().clamp_min(1.0)]))
    return torch.cat(rows).float()


def _routing_fields(routing: dict, numbers: list) -> dict:
    """Log fields out of _routing_vector's numbers (read from the device in one go)."""
    fields, per_layer, start = {}, {}, 0
    for tower in ("vision", "text"):
        entropy, load = [], []
        for stats in routing[tower]:
            tokens, entropy_sum = numbers[start], numbers[start + 1]
            entropy.append(round(entropy_sum / max(tokens, 1.0), 5))
            load.append([round(x, 5) for x in numbers[start + 2:start + 2 + stats.num_experts]])
            start += 2 + stats.num_experts
        per_layer[tower] = {"entropy": entropy, "load": load}
        fields[f"routing_entropy_{tower}"] = float(np.mean(entropy)) if entropy else float("nan")
    fields["per_layer"] = per_layer
    return fields


def _log_row(run: _Run, spec: StageSpec, epoch: int, values: dict, seconds: float) -> dict:
    """The log line of the step just taken: one read from the device (routing only every log_every steps)."""
    scalars = [k for k in ("loss", "invalid_samples", "aux_loss", "load_balancing_loss", "router_z_loss") if k in values]
    with_routing = "routing" in values and ((run.step - 1) % spec.log_every == 0 or run.step == run.total_steps)
    parts = [torch.stack([values[k].float().reshape(()) for k in scalars])]
    if with_routing:
        parts.append(_routing_vector(values["routing"]))
    numbers = torch.cat(parts).tolist()
    row = {"step": run.step, "epoch": epoch, "loss": numbers[0], "lr": run.scheduler.get_last_lr()[0],
           "samples_per_s": spec.batch_size / max(seconds, 1e-9)}
    for g in run.optimizer.param_groups:
        if g.get("name") == "router":
            row["lr_router"] = g["lr"]
    row.update({k: v for k, v in zip(scalars[2:], numbers[2:])})
    if with_routing:
        row.update(_routing_fields(values["routing"], numbers[len(scalars):]))
    invalid = int(numbers[1])
    if invalid:
        row["invalid_samples"] = invalid
    return row


def train_stage(accelerator, model, dataset, spec: StageSpec, stage_dir: str, labels=None) -> dict:
    """Train `model` in place (unwrapped model returned in the summary's "model") and checkpoint into
    stage_dir/checkpoints. Returns a summary: steps, losses, sampler stats, seconds."""
    run = _setup(accelerator, model, dataset, spec, stage_dir, labels)
    trainable_names = [n for n, _ in run.named]
    run.model.train()
    start_time, first_step, losses = time.time(), run.step, []
    bar = tqdm(total=run.total_steps, initial=run.step, desc=spec.stage_name, disable=not accelerator.is_main_process, dynamic_ncols=True)
    while run.step < run.total_steps:
        epoch, position = divmod(run.step, run.steps_per_epoch)
        run.sampler.set_epoch(epoch)
        run.sampler.skip(position)
        # A private generator: creating a loader iterator draws a seed, and drawing it from the global
        # RNG would shift the dropout stream of a resumed run against an uninterrupted one.
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=run.sampler, num_workers=spec.num_workers,
                                             pin_memory=accelerator.device.type == "cuda",
                                             generator=torch.Generator().manual_seed(spec.seed + epoch))
        for batch in loader:
            t0 = time.time()
            values = _train_step(run, batch, spec)
            run.step += 1
            row = _log_row(run, spec, epoch, values, time.time() - t0)  # every rank: the collectives are done
            run.counters["invalid_samples"] += row.get("invalid_samples", 0)
            losses.append(row["loss"])
            if accelerator.is_main_process:
                with open(run.log_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
            bar.update(1)
            if run.step % spec.save_every == 0 or run.step == run.total_steps:
                save_checkpoint(accelerator, run.ckpt_dir, run.step, run.model, run.optimizer, run.scheduler, trainable_names,
                                {"counters": run.counters, "spec": dataclasses.asdict(spec)})
            if run.step >= run.total_steps:
                break
    bar.close()
    if spec.grad_checkpointing:
        run.unwrapped.gradient_checkpointing_disable()
    for p in run.unwrapped.parameters():
        p.requires_grad_(False)
    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(run.model)
    accelerator.free_memory()
    return {
        "model": model,
        "steps": run.total_steps,
        "steps_per_epoch": run.steps_per_epoch,
        "epochs": math.ceil(run.total_steps / run.steps_per_epoch),
        "resumed_from_step": first_step if run.resumed else None,
        "final_loss": losses[-1] if losses else _last_logged_loss(run.log_path),
        "mean_loss_last_epoch_run": float(np.mean(losses[-run.steps_per_epoch:])) if losses else None,
        "trainable_parameters": int(sum(p.numel() for _, p in run.named)),
        "sampler": run.sampler.plan.stats,
        "invalid_samples": run.counters["invalid_samples"],
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


def train_contrastive(model_dir_or_model, data_path, out_dir, spec: StageSpec | None = None, *, image_root=None, tokenizer=None,
                      image_processor=None, mixed_precision: str = "auto", batch_groups=None, **spec_fields) -> str:
    """Train a dense CLIP or a CLIP-MoE contrastively on a data file; returns the saved model directory.

    model_dir_or_model: a directory (dense 'clip' or 'clipmoe', with tokenizer and image processor)
    or a model object (then pass tokenizer= and image_processor=).
    spec: the stage's settings (StageSpec; its defaults when None); keywords named as StageSpec's
    fields override it (e.g. trainable="router", batch_size=64 for the GLOBAL batch, logit_scale=None
    to use and train the model's temperature).
    batch_groups: one integer per record of the data file: every batch is drawn from one group, as
    MCL draws its batches from one cluster (small_clusters says what happens to the leftovers);
    none = batches drawn from all records.
    Logs to <out_dir>/<stage_name>/log.jsonl; the model goes to <out_dir>/<stage_name>/model.
    Rerunning resumes from the last checkpoint; a finished run returns at once.
    """
    from .data import ImageTextDataset, load_records

    spec = dataclasses.replace(spec or StageSpec(), **spec_fields).validate()
    stage_dir = os.path.join(os.fspath(out_dir), spec.stage_name)
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
    records, _ = load_records(data_path, image_root, skip_bad=spec.skip_bad)
    if batch_groups is not None and len(batch_groups) != len(records):
        raise CLIPMoEError(f"{data_path}: batch_groups has {len(batch_groups)} entries for {len(records)} records")
    dataset = ImageTextDataset(records, image_processor, tokenizer, text_length(model), spec.skip_bad, spec.cache_samples)
    accelerator = make_accelerator(mixed_precision)
    torch.manual_seed(spec.seed)
    summary = train_stage(accelerator, model, dataset, spec, stage_dir,
                          None if batch_groups is None else np.asarray(batch_groups, dtype=np.int64))
    return finish_stage(accelerator, summary, stage_dir, tokenizer, image_processor)
