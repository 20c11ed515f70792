"""DMU settings: every knob of the pipeline, one dataclass. Torch-free, so that `clipmoe dmu --help`
builds its flags from it without importing torch, sklearn or accelerate."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import CLIPMoEError


@dataclass
class DMUSettings:
    """Every knob of the pipeline; defaults are the paper's / official code's (router lr excepted)."""

    num_experts: int = 4
    top_k: int = 2
    clusters_per_modality: int = 3  # k-means k on images and on texts: 3 x 3 = 9 joint clusters per stage
    mcl_epochs: int = 1
    router_epochs: int = 1
    batch_size: int = 800  # GLOBAL batch (8 GPUs x 100 in the paper)
    lr_mcl: float = 1e-5
    wd_mcl: float = 0.2
    warmup_steps: int = 200
    # The official 1e-6 leaves the routers at their random init (see the reference notes); 1e-3 moves them.
    lr_router: float = 1e-3
    wd_router: float = 0.01
    router_trains: str = "router"  # or "router+experts" (experts then use lr_mcl)
    lb_coef: float = 0.01  # the CLIP-MoE's router_aux_loss_coef
    aux_loss_count: str = "top_k"  # its router_aux_loss_count: "top_k" = the official code's balance loss, "top1" = Switch's
    z_coef: float = 0.0  # its router_z_loss_coef
    expert_dropout: float = 0.1  # inside experts during router training, as the official code
    label_smoothing: float = 0.1
    logit_scale: float | None = 100.0  # frozen multiplier; None = use and train the model's
    mcl_towers: str = "both"  # or "vision": only the vision FFNs train, and only the vision tower gets MoE
    last_k_blocks: int | None = None  # MCL trains (and MoE replaces) only the last K blocks of each tower
    small_clusters: str = "drop"  # or "merge": leftovers of clusters go into mixed batches
    restart_from_base: bool = True  # each MCL stage starts from the base (official); False = from the previous stage
    save_every: int = 500
    seed: int = 0
    num_workers: int = 0
    grad_checkpointing: bool = False
    mixed_precision: str = "auto"  # "auto" = bf16 on CUDA, none on CPU; or "no" / "bf16" / "fp16"
    skip_bad: bool = False
    data_format: str = "auto"
    feature_batch_size: int = 256
    max_grad_norm: float | None = None
    direct_ft_trainable: str = "all"  # direct fine-tune baseline: "all" or "ffn"
    upcycling_trains: str = "router+experts"  # sparse-upcycling baseline: "router+experts" or "router"
    routing_stats_samples: int = 256

    def validate(self):
        from ..configuration import AUX_LOSS_COUNTS  # imports transformers: not needed to build the flags

        checks = [
            (self.num_experts >= 2, "num_experts must be at least 2 (expert 0 is the base FFN)"),
            (1 <= self.top_k <= self.num_experts, f"top_k must be between 1 and num_experts={self.num_experts}"),
            (self.clusters_per_modality >= 1, "clusters_per_modality must be positive"),
            (self.batch_size >= 2, "batch_size must be at least 2"),
            (self.router_trains in ("router", "router+experts"), "router_trains must be 'router' or 'router+experts'"),
            (self.aux_loss_count in AUX_LOSS_COUNTS, f"aux_loss_count must be one of {', '.join(AUX_LOSS_COUNTS)}"),
            (self.mcl_towers in ("both", "vision"), "mcl_towers must be 'both' or 'vision'"),
            (self.small_clusters in ("drop", "merge"), "small_clusters must be 'drop' or 'merge'"),
            (self.direct_ft_trainable in ("all", "ffn"), "direct_ft_trainable must be 'all' or 'ffn'"),
            (self.upcycling_trains in ("router", "router+experts"), "upcycling_trains must be 'router' or 'router+experts'"),
            (self.last_k_blocks is None or self.last_k_blocks >= 1, "last_k_blocks must be positive"),
            (self.save_every >= 1, "save_every must be positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise CLIPMoEError(f"settings: {message}")
        return self


# Settings that do not change the result: a rerun may change them freely.
RESULT_NEUTRAL_SETTINGS = {"save_every", "num_workers", "feature_batch_size", "routing_stats_samples"}
