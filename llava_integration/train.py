"""LLaVA-1.5 training entry point with CLIP-MoE (run by every DeepSpeed worker):

    deepspeed [--hostfile H] --module llava_integration.train --deepspeed ZERO_JSON \
        --vision_tower clipmoe ...  (all of llava/train/train.py's arguments)

(ZERO_JSON: zero2.json or zero3.json in `llava_integration.launch_dir()`, next to the scripts that
run this with LLaVA-1.5's settings.)

Extra arguments:
  --mm_vision_moe_tune none|routers|routers_experts   what of the tower trains (default none: frozen)
  --mm_vision_moe_lr LR                               learning rate of routers/experts (default: --learning_rate)
  --mm_vision_moe_aux_loss_coef C                     load-balancing loss weight (default: the tower's config)
  --attn_implementation sdpa|eager|flash_attention_2  language model attention (default: transformers' choice)
  --debug (or $CLIPMOE_DEBUG=1)                       show the traceback of a user error

A user error (unset $CLIPMOE_VISION_TOWER, a missing file, a tower that is not a CLIP-MoE, ...)
is one `error:` line and exit code 2, found before any model is loaded (`checks.py`).

Rerun into an --output_dir that holds a checkpoint-N, the same command resumes from the newest
complete one (weights, optimizer, LR schedule, RNG and data position); a resume whose inputs or
settings changed is refused (`resume.py`).
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field

from .checks import check_arguments, exit_on_user_error, pop_debug
from .resume import claim_output_dir, parse_arguments


def _pop_option(argv: list, name: str, default=None):
    """Remove `--name value` / `--name=value` from argv (LLaVA's parser does not know it)."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
            del argv[i:i + 2]
            return value
        if arg.startswith(name + "="):
            del argv[i]
            return arg.split("=", 1)[1]
    return default


def extend_model_arguments(base):
    @dataclass
    class ModelArguments(base):
        mm_vision_moe_tune: str = field(
            default="none", metadata={"help": "CLIP-MoE tower: none (frozen), routers, or routers_experts"})
        mm_vision_moe_lr: float | None = field(
            default=None, metadata={"help": "learning rate of the trainable routers/experts"})
        mm_vision_moe_aux_loss_coef: float | None = field(
            default=None, metadata={"help": "weight of the MoE load-balancing loss (training only)"})

    return ModelArguments


def prepare():
    """Register the plugin and install the CLIP-MoE pieces into llava.train.train (the training
    patches: they change LLaVA's training module only, and only when training starts here)."""
    import llava_integration

    llava_integration.register()
    from . import compat
    from .trainer import CLIPMoELLaVATrainer, with_trainable_tower_keys

    # Only after our trainer module, which imports LLaVA's trainer module the way newer
    # transformers allow (compat.llava_trainer_importable); llava.train.train imports it too.
    llava_train = importlib.import_module("llava.train.train")
    llava_trainer = importlib.import_module("llava.train.llava_trainer")

    if not getattr(llava_train.ModelArguments, "_clipmoe", False):
        llava_train.ModelArguments = extend_model_arguments(llava_train.ModelArguments)
        llava_train.ModelArguments._clipmoe = True
    llava_train.LLaVATrainer = CLIPMoELLaVATrainer
    for module in (llava_train, llava_trainer):
        module.get_mm_adapter_state_maybe_zero_3 = with_trainable_tower_keys(module.get_mm_adapter_state_maybe_zero_3)
    llava_train.safe_save_model_for_hf_trainer = compat.save_without_cuda_sync(llava_train.safe_save_model_for_hf_trainer)
    return llava_train


def seed_model_init(argv: list) -> None:
    """Seed the random generators with --seed (transformers' default 42) before LLaVA builds the model:
    it initialises the new projector before the Trainer seeds, so two runs of one command would
    otherwise start from different projectors (and a resume could not be checked against a run)."""
    from transformers import set_seed

    seed = parse_arguments(argv).get("--seed", "42")  # the last one wins, as in LLaVA's parser
    if seed.isdigit():  # anything else is reported by LLaVA's parser
        set_seed(int(seed))


def main(argv=None):
    """Check the arguments (one `error:` line and exit 2 for a bad one, before any model loads; the
    traceback with --debug or $CLIPMOE_DEBUG=1), then run LLaVA's train() on them."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = pop_debug(argv)
    with exit_on_user_error(debug):
        check_arguments(argv)
        if os.environ.get("RANK", "0") == "0":  # one process records the run (and refuses a changed resume)
            claim_output_dir(argv)
        attn = _pop_option(argv, "--attn_implementation")
        sys.argv[1:] = argv  # LLaVA's train() parses sys.argv
        seed_model_init(argv)
        prepare().train(attn_implementation=attn)


if __name__ == "__main__":
    main()
