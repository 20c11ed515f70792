"""DMU settings: every knob of the pipeline (DMUSettings) and of one training stage (StageSpec), as
dataclasses. Torch-free, so that `clipmoe dmu --help` builds its flags from them without importing
torch, sklearn or accelerate."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..errors import CLIPMoEError


def _knob(default, help: str, choices: tuple | None = None):
    """A setting with the help text (and allowed values) that `clipmoe dmu run --help` shows."""
    return field(default=default, metadata={"help": help, "choices": choices})


def _choice_checks(settings):
    """(ok, message) for every field that declares its allowed values."""
    return [(getattr(settings, f.name) in f.metadata["choices"], f"{f.name} must be one of {', '.join(f.metadata['choices'])}")
            for f in fields(settings) if f.metadata["choices"]]


@dataclass
class DMUSettings:
    """Every knob of the pipeline; defaults are the paper's / official code's (router lr excepted)."""

    num_experts: int = _knob(4, "experts per MoE layer; expert 0 is the base FFN, one MCL stage trains each of the others")
    top_k: int = _knob(2, "experts each token is routed to (1..num_experts)")
    clusters_per_modality: int = _knob(3, "k-means k on image and on text features: k x k joint clusters per MCL stage")
    mcl_epochs: int = _knob(1, "epochs of each multistage contrastive learning (MCL) stage")
    router_epochs: int = _knob(1, "epochs of the router stage")
    batch_size: int = _knob(800, "GLOBAL contrastive batch, summed over all GPUs (8 x 100 in the paper)")
    lr_mcl: float = _knob(1e-5, "learning rate of the MCL stages (and of the experts when they train in the router stage)")
    wd_mcl: float = _knob(0.2, "weight decay of the MCL stages")
    warmup_steps: int = _knob(200, "linear warm-up steps of every stage")
    # The official 1e-6 leaves the routers at their random init (see the reference notes); 1e-3 moves them.
    lr_router: float = _knob(1e-3, "learning rate of the routers (the official 1e-6 leaves them at their random init)")
    wd_router: float = _knob(0.01, "weight decay of the routers")
    router_trains: str = _knob("router", "what trains in the router stage; the experts then use --lr-mcl",
                               ("router", "router+experts"))
    lb_coef: float = _knob(0.01, "load-balancing loss coefficient (the CLIP-MoE's router_aux_loss_coef)")
    aux_loss_count: str = _knob("top_k", "what counts in the balance loss: top_k = every chosen expert, as the official "
                                "code (value k at perfect balance); top1 = Switch's first choice (value 1)")
    z_coef: float = _knob(0.0, "router z-loss coefficient (its router_z_loss_coef); 0 = off, as the paper")
    expert_dropout: float = _knob(0.1, "dropout inside the experts during the router stage, as the official code")
    label_smoothing: float = _knob(0.1, "label smoothing of the contrastive cross-entropy")
    logit_scale: float | None = _knob(100.0, "frozen logit multiplier; none = use and train the model's own")
    mcl_towers: str = _knob("both", "towers whose FFNs MCL trains; vision = only the vision tower becomes MoE",
                            ("both", "vision"))
    last_k_blocks: int | None = _knob(None, "MCL trains (and MoE replaces) only the last K blocks of each tower; none = all")
    small_clusters: str = _knob("drop", "clusters smaller than a batch: drop them, or merge the leftovers into mixed batches",
                                ("drop", "merge"))
    restart_from_base: bool = _knob(True, "each MCL stage starts from the base (official); --no-restart-from-base "
                                    "continues from the previous stage")
    save_every: int = _knob(500, "steps between resumable checkpoints")
    log_every: int = _knob(10, "per-layer routing load and entropy in the stage logs at step 1 and every N steps")
    seed: int = _knob(0, "seed of clustering, batch order and router initialisation")
    num_workers: int = _knob(0, "data-loader worker processes per GPU")
    cache_samples: bool = _knob(False, "keep every sample decoded and preprocessed in memory after its first read, so that "
                                "later epochs and stages skip the image decoding (small datasets; with --num-workers 0)")
    grad_checkpointing: bool = _knob(False, "recompute activations in the backward pass (less activation memory, more compute)")
    mixed_precision: str = _knob("auto", "auto = bf16 on CUDA, none on CPU", ("auto", "no", "bf16", "fp16"))
    skip_bad: bool = _knob(False, "skip records whose image is missing or unreadable (counted in the log) instead of stopping")
    data_format: str = _knob("auto", "layout of --data: auto (from the file), sharegpt4v, llava, jsonl or folder (img2dataset)")
    feature_batch_size: int = _knob(256, "batch of the feature extraction before clustering")
    max_grad_norm: float | None = _knob(None, "gradient clipping norm; none = no clipping")
    direct_ft_trainable: str = _knob("all", "direct fine-tuning baseline: every weight, or only the FFNs", ("all", "ffn"))
    upcycling_trains: str = _knob("router+experts", "sparse-upcycling baseline: what trains", ("router+experts", "router"))
    routing_stats_samples: int = _knob(256, "held-out samples for the routing statistics in the report")

    def validate(self):
        """One line naming the flag of the first setting out of range (before anything is read)."""
        # imported here: they pull in transformers and torch, which building the flags does not need
        from ..configuration import AUX_LOSS_COUNTS
        from .data import FORMATS

        def optional_positive(value):
            return value is None or value > 0

        checks = [
            ("num_experts", self.num_experts >= 2, "must be at least 2 (expert 0 is the base FFN)"),
            ("top_k", 1 <= self.top_k <= self.num_experts, f"must be between 1 and --num-experts {self.num_experts}"),
            ("clusters_per_modality", self.clusters_per_modality >= 1, "must be positive"),
            ("mcl_epochs", self.mcl_epochs >= 1, "must be positive"),
            ("router_epochs", self.router_epochs >= 1, "must be positive"),
            ("batch_size", self.batch_size >= 2, "must be at least 2"),
            ("lr_mcl", self.lr_mcl > 0, "must be positive"),
            ("lr_router", self.lr_router > 0, "must be positive"),
            ("wd_mcl", self.wd_mcl >= 0, "must not be negative"),
            ("wd_router", self.wd_router >= 0, "must not be negative"),
            ("warmup_steps", self.warmup_steps >= 0, "must not be negative"),
            ("lb_coef", self.lb_coef >= 0, "must not be negative"),
            ("z_coef", self.z_coef >= 0, "must not be negative"),
            ("expert_dropout", 0 <= self.expert_dropout < 1, "must be in [0, 1)"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "must be in [0, 1)"),
            ("logit_scale", optional_positive(self.logit_scale), "must be positive, or 'none' to train the model's"),
            ("max_grad_norm", optional_positive(self.max_grad_norm), "must be positive, or 'none'"),
            ("aux_loss_count", self.aux_loss_count in AUX_LOSS_COUNTS, f"must be one of {', '.join(AUX_LOSS_COUNTS)}"),
            ("data_format", self.data_format in FORMATS, f"must be one of {', '.join(FORMATS)}"),
            ("last_k_blocks", optional_positive(self.last_k_blocks), "must be positive"),
            ("save_every", self.save_every >= 1, "must be positive"),
            ("num_workers", self.num_workers >= 0, "must not be negative"),
            ("feature_batch_size", self.feature_batch_size >= 1, "must be positive"),
            ("routing_stats_samples", self.routing_stats_samples >= 1, "must be positive"),
            *((f.name, getattr(self, f.name) in f.metadata["choices"], f"must be one of {', '.join(f.metadata['choices'])}")
              for f in fields(self) if f.metadata["choices"]),
        ]
        for name, ok, message in checks:
            if not ok:
                raise CLIPMoEError(f"--{name.replace('_', '-')} {getattr(self, name)!r}: {message}")
        return self


# Settings that do not change the result: a rerun may change them freely.
RESULT_NEUTRAL_SETTINGS = {"save_every", "log_every", "num_workers", "cache_samples", "feature_batch_size", "routing_stats_samples"}


TRAINABLE_CHOICES = ("all", "ffn", "router", "router+experts")


@dataclass
class StageSpec:
    """One contrastive training stage: the single source of its settings. The pipeline builds one per
    stage from DMUSettings, `train_contrastive` takes one, `clipmoe dmu train` has a flag per field.
    Defaults are those of a standalone `dmu train` run."""

    stage_name: str = _knob("train", "the stage's folder under --out (log.jsonl, checkpoints/, model/)")
    trainable: str = _knob("all", "what trains: every weight, the FFNs / experts, the routers, or both", TRAINABLE_CHOICES)
    towers: str = _knob("both", "towers whose FFNs / routers train (trainable other than all)", ("both", "vision"))
    last_k_blocks: int | None = _knob(None, "FFNs / routers of the last K blocks of each tower only; none = all blocks")
    epochs: int = _knob(1, "passes over the data")
    max_steps: int | None = _knob(None, "stop after this many optimizer steps (budget matching); none = the epochs")
    batch_size: int = _knob(32, "GLOBAL contrastive batch, summed over all GPUs")
    lr: float = _knob(1e-5, "learning rate")
    weight_decay: float = _knob(0.2, "weight decay (none on biases, norms and the logit scale)")
    lr_router: float | None = _knob(None, "learning rate of the routers, in their own group; none = --lr")
    wd_router: float = _knob(0.01, "weight decay of the routers (with --lr-router)")
    warmup_steps: int = _knob(0, "linear warm-up steps before the cosine decay")
    label_smoothing: float = _knob(0.1, "label smoothing of the contrastive cross-entropy")
    logit_scale: float | None = _knob(100.0, "frozen logit multiplier; none = use and train the model's own")
    aux_loss: bool = _knob(True, "add a CLIP-MoE's load-balancing (+ z) loss, weighted as its config says")
    save_every: int = _knob(500, "steps between resumable checkpoints")
    log_every: int = _knob(10, "per-layer routing load and entropy in the log at step 1 and every N steps")
    seed: int = _knob(0, "seed of the batch order")
    num_workers: int = _knob(0, "data-loader worker processes per GPU")
    cache_samples: bool = _knob(False, "keep every sample decoded and preprocessed in memory after its first read, so that "
                                "later epochs and stages skip the image decoding (small datasets; with --num-workers 0)")
    grad_checkpointing: bool = _knob(False, "recompute activations in the backward pass (less activation memory, more compute)")
    small_clusters: str = _knob("drop", "cluster batches (MCL): drop the leftovers of clusters or merge them into mixed batches",
                                ("drop", "merge"))
    max_grad_norm: float | None = _knob(None, "gradient clipping norm; none = no clipping")
    skip_bad: bool = _knob(False, "skip records whose image is missing or unreadable (counted in the log) instead of stopping")

    def validate(self) -> StageSpec:
        checks = [
            (self.last_k_blocks is None or self.last_k_blocks >= 1, "last_k_blocks must be positive"),
            (self.epochs >= 0, "epochs must not be negative"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be positive"),
            (self.batch_size >= 2, "batch_size must be at least 2"),
            (self.save_every >= 1 and self.log_every >= 1, "save_every and log_every must be positive"),
            (self.warmup_steps >= 0, "warmup_steps must not be negative"),
            *_choice_checks(self),
        ]
        for ok, message in checks:
            if not ok:
                raise CLIPMoEError(f"stage {self.stage_name}: {message}")
        return self
