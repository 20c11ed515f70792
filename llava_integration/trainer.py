"""LLaVA's trainer with the CLIP-MoE options, and the trainer API changes of newer transformers.

* routers / experts: made trainable again after LLaVA's stage-1 freeze, kept in the language
  model's dtype (LLaVA casts the tower to fp16/bf16, fine for a frozen tower only), given their
  own learning rate (`--mm_vision_moe_lr`), declared ZeRO-3 leaf modules, and saved with the
  projector in stage 1 (LLaVA's projector-only save would drop them).
* saving: views of one ZeRO-3 buffer are copied apart, else safetensors drops all but one.
* checkpoints: transformers' full, resumable checkpoint in stage 1 too (LLaVA saved the projector
  only), and a resume starts from the newest complete checkpoint (`resume.py`).
* DeepSpeed: ZeRO-3's "auto" prefetch bucket size, which old transformers fill as a float, is
  filled as an int (this run's config).
* transformers >= 4.46/5.0: `tokenizer=` became `processing_class=`; 4.47 dropped `metrics` from
  `_save_checkpoint`; 4.52 passes the dataset to `_get_train_sampler` (LLaVA's takes none).
"""

from __future__ import annotations

import functools
import inspect
import sys

import torch
from transformers import Trainer

from clipmoe_encoder.tower import CLIPMoEVisionTower, declare_zero3_leaves

from . import compat
from .resume import incomplete_checkpoints, newest_complete_checkpoint

with compat.llava_trainer_importable():
    from llava.train.llava_trainer import LLaVATrainer

_TRAINER_PARAMS = set(inspect.signature(Trainer.__init__).parameters)
_SAVE_TAKES_METRICS = "metrics" in inspect.signature(Trainer._save_checkpoint).parameters


def clipmoe_tower(model):
    """The CLIP-MoE tower of a LLaVA-1.5 model, else None."""
    # Trainer.model is the bare model under DeepSpeed (the engine is model_wrapped), but FSDP
    # replaces it with its wrapper before create_optimizer runs.
    model = getattr(model, "module", model)
    get = getattr(model, "get_vision_tower", None)
    tower = get() if get is not None else None
    return tower if isinstance(tower, CLIPMoEVisionTower) else None


class CLIPMoELLaVATrainer(LLaVATrainer):
    def __init__(self, *args, tokenizer=None, **kwargs):
        if tokenizer is not None:
            kwargs["tokenizer" if "tokenizer" in _TRAINER_PARAMS else "processing_class"] = tokenizer
        super().__init__(*args, **kwargs)
        for config in self._deepspeed_configs():
            compat.fill_zero3_prefetch_bucket(config, self.model)
        self._prepare_tower()
        self._cast_late_parameters()

    def _deepspeed_configs(self):
        """The run's HfTrainerDeepSpeedConfig: deepspeed_init reads the accelerator's (4.37+), which
        TrainingArguments normally shares with args."""
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        found = (getattr(self.args, "hf_deepspeed_config", None), getattr(plugin, "hf_ds_config", None))
        return list({id(c): c for c in found if c is not None}.values())

    def _cast_late_parameters(self):
        """Under ZeRO-3, LLaVA's language model is partitioned as it loads (zero.Init, already in
        bf16/fp16); the projector LLaVA builds afterwards is a plain fp32 module, and DeepSpeed casts
        nothing in a model that has partitioned parameters. DeepSpeed 0.19.8 then refuses the mixed
        dtypes of the trainable parameters (stage3 `defragment` asserts one dtype): cast every
        parameter not yet partitioned to the run's dtype, as DeepSpeed does for a model it
        partitions itself. Found by the first real-GPU run of scripts/gpu_check.sh (bf16 stage 2
        through finetune.sh); LLaVA's own trainer does not do this, whatever the tower."""
        dtype = torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else None
        model = getattr(self.model, "module", self.model)
        parameters = list(model.parameters())
        if dtype is None or not any(hasattr(p, "ds_id") for p in parameters):
            return
        for p in parameters:
            if not hasattr(p, "ds_id") and p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)

    def _prepare_tower(self):
        tower = clipmoe_tower(self.model)
        if tower is None:
            return
        tower.set_trainable(tower.tune)  # stage 1 (tune_mm_mlp_adapter) froze the whole model again
        if tower.tune != "none":
            tower.to(dtype=self.model.get_model().embed_tokens.weight.dtype)
        declare_zero3_leaves(self.model)

    def create_optimizer(self):
        optimizer = super().create_optimizer()
        tower = clipmoe_tower(self.model)
        lr = getattr(self.model.config, "mm_vision_moe_lr", None)
        if tower is None or lr is None or getattr(self, "_clipmoe_groups_done", False):
            return optimizer
        moe = {id(p) for _, p in tower.moe_parameters() if p.requires_grad}
        extra = []
        for group in optimizer.param_groups:
            mine = [p for p in group["params"] if id(p) in moe]
            if mine:
                group["params"] = [p for p in group["params"] if id(p) not in moe]
                extra.append({**{k: v for k, v in group.items() if k != "params"}, "params": mine, "lr": lr})
        optimizer.param_groups = [g for g in optimizer.param_groups if g["params"]]
        for group in extra:
            optimizer.add_param_group(group)
        self._clipmoe_groups_done = True
        return optimizer

    def _save(self, output_dir=None, state_dict=None):
        if state_dict is not None:
            state_dict = unshare_views(state_dict)
        return super()._save(output_dir, state_dict=state_dict)

    def _get_train_sampler(self, train_dataset=None):
        # 4.52+ passes the dataset, which LLaVA's override does not accept; it is self.train_dataset
        # (LLaVA's datasets are torch Datasets, left as they are), which 4.37 and 5.x read without it.
        return super()._get_train_sampler()

    def _save_checkpoint(self, model, trial, metrics=None):
        # transformers' full checkpoint in every stage (DeepSpeed module and optimizer states, LR
        # scheduler, RNG, trainer_state.json last): what a resume needs. LLaVA's stage-1 checkpoint
        # held only the projector, so a killed stage 1 could not resume.
        if _SAVE_TAKES_METRICS:
            Trainer._save_checkpoint(self, model, trial, metrics=metrics)
        else:
            Trainer._save_checkpoint(self, model, trial)
        if getattr(self.args, "tune_mm_mlp_adapter", False):
            # and LLaVA's stage-1 file beside it: projector (+ trained tower parameters) and config
            LLaVATrainer._save_checkpoint(self, model, trial)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        # LLaVA's train() passes True when the output folder holds any checkpoint-*, and transformers
        # then takes the highest-numbered one even if a kill cut its saving short: take the newest
        # complete one instead (none: start afresh).
        if resume_from_checkpoint is True:
            resume_from_checkpoint = self._checkpoint_to_resume()
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _load_rng_state(self, checkpoint):
        with compat.numpy_arrays_loadable():  # transformers 4.37 on torch >= 2.6 (compat.py)
            return super()._load_rng_state(checkpoint)

    def _checkpoint_to_resume(self):
        output_dir = self.args.output_dir
        checkpoint = newest_complete_checkpoint(output_dir)
        if self.is_world_process_zero():
            for skipped in incomplete_checkpoints(output_dir):
                print(f"resume: skipping {skipped} (incomplete: no trainer_state.json naming its step)", file=sys.stderr)
            print(f"resume: continuing from {checkpoint}" if checkpoint else
                  f"resume: no complete checkpoint in {output_dir}, starting afresh", file=sys.stderr)
        return checkpoint


def unshare_views(state_dict: dict) -> dict:
    """Copy tensors that are distinct views of one storage.

    ZeRO-3's consolidated 16-bit state dict can return parameters as views of one gathered buffer
    (seen for the projector with transformers 4.37 + DeepSpeed 0.19); transformers' safetensors
    save then keeps one of them and drops the others as "shared tensors", silently losing
    weights. Real ties (same data pointer and shape) stay shared.
    """
    first_of_storage = {}
    out = {}
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor) and value.device.type != "meta":
            first = first_of_storage.setdefault(value.untyped_storage().data_ptr(), value)
            if first is not value and (first.data_ptr() != value.data_ptr() or first.shape != value.shape):
                value = value.clone()
        out[key] = value
    return out


def with_trainable_tower_keys(get_state):
    """Wrap LLaVA's get_mm_adapter_state_maybe_zero_3 so that the stage-1 save (projector only)
    also keeps the tower parameters that were trained (routers, experts)."""
    if getattr(get_state, "_clipmoe", False):
        return get_state

    @functools.wraps(get_state)
    def get_mm_adapter_state_maybe_zero_3(named_params, keys_to_match):
        named_params = list(named_params)
        trained = [n for n, p in named_params if ".vision_tower.vision_tower." in n and p.requires_grad]
        return get_state(named_params, list(keys_to_match) + trained)

    get_mm_adapter_state_maybe_zero_3._clipmoe = True
    return get_mm_adapter_state_maybe_zero_3
