"""Seeded global-batch planning shared by every rank.

The plan of an epoch is a pure function of (labels, global batch, seed, epoch): every rank computes
the same list of global batches and takes its own contiguous slice of each, so ranks are disjoint,
no sample appears twice in an epoch, and a resumed run replays exactly the same order. (The
official MCL sampler draws an unseeded permutation per rank, which duplicates and skips samples.)

With cluster labels, each global batch holds samples of one accumulated cluster only, so all
in-batch negatives share the anchor's cluster (the MCL objective). Samples that do not fill a
whole global batch of their cluster (small clusters, and the remainder of big ones) are either
dropped, as the official code does, or merged into mixed batches. Labels < 0 mark samples to leave
out (undecodable images).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import CLIPMoEError

SMALL_CLUSTER_POLICIES = ("drop", "merge")


@dataclass
class EpochPlan:
    """Global batches of one epoch (arrays of dataset indices) and what was dropped or merged."""

    batches: list[np.ndarray]
    stats: dict = field(default_factory=dict)


def plan_epoch(num_samples: int, global_batch: int, seed: int, epoch: int, labels=None, small_clusters: str = "drop") -> EpochPlan:
    """Plan one epoch. labels=None: ordinary shuffled batches (the last partial batch is dropped)."""
    if global_batch < 1:
        raise CLIPMoEError(f"global batch size must be positive, got {global_batch}")
    if small_clusters not in SMALL_CLUSTER_POLICIES:
        raise CLIPMoEError(f"small_clusters must be one of {SMALL_CLUSTER_POLICIES}, got {small_clusters!r}")
    rng = np.random.default_rng([seed, epoch])
    labels = np.zeros(num_samples, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    if labels.shape != (num_samples,):
        raise CLIPMoEError(f"{labels.shape[0]} cluster labels for {num_samples} samples")
    usable = np.flatnonzero(labels >= 0)
    clusters = np.unique(labels[usable])
    batches, leftovers = [], []
    small = 0
    for c in clusters:  # sorted, so the plan does not depend on dict or set order
        members = usable[labels[usable] == c]
        members = members[rng.permutation(len(members))]
        full = len(members) // global_batch
        small += full == 0
        batches.extend(members[: full * global_batch].reshape(full, global_batch))
        leftovers.append(members[full * global_batch:])
    leftovers = np.concatenate(leftovers) if leftovers else np.zeros(0, dtype=np.int64)
    cluster_batches = len(batches)
    mixed = 0
    if small_clusters == "merge" and len(leftovers) >= global_batch:
        leftovers = leftovers[rng.permutation(len(leftovers))]
        mixed = len(leftovers) // global_batch
        batches.extend(leftovers[: mixed * global_batch].reshape(mixed, global_batch))
        leftovers = leftovers[mixed * global_batch:]
    order = rng.permutation(len(batches))  # interleave clusters across steps
    batches = [batches[i] for i in order]
    stats = {
        "samples": int(num_samples),
        "excluded_samples": int(num_samples - len(usable)),
        "clusters": len(clusters),
        "clusters_smaller_than_batch": int(small),
        "cluster_batches": int(cluster_batches),
        "mixed_batches": int(mixed),
        "batches": len(batches),
        "dropped_samples": len(leftovers),
        "small_clusters": small_clusters,
    }
    return EpochPlan(batches, stats)


class GlobalBatchSampler:
    """Batch sampler for a DataLoader: yields this rank's slice of each planned global batch.

    `set_epoch(e)` picks the epoch's plan; `skip(n)` starts the epoch at its n-th batch (resume).
    """

    def __init__(self, num_samples, global_batch, seed, rank=0, world_size=1, labels=None, small_clusters="drop"):
        if global_batch % world_size:
            raise CLIPMoEError(f"global batch size {global_batch} is not divisible by the {world_size} processes")
        self.num_samples, self.global_batch, self.seed = num_samples, global_batch, seed
        self.rank, self.world_size, self.labels, self.small_clusters = rank, world_size, labels, small_clusters
        self.local_batch = global_batch // world_size
        self.epoch, self.start = 0, 0
        self.plan = self._plan()

    def _plan(self):
        return plan_epoch(self.num_samples, self.global_batch, self.seed, self.epoch, self.labels, self.small_clusters)

    def set_epoch(self, epoch: int):
        if epoch != self.epoch:
            self.epoch = epoch
            self.plan = self._plan()
        self.start = 0

    def skip(self, batches: int):
        self.start = batches

    def __len__(self):
        return len(self.plan.batches) - self.start

    def __iter__(self):
        lo, hi = self.rank * self.local_batch, (self.rank + 1) * self.local_batch
        for batch in self.plan.batches[self.start:]:
            yield batch[lo:hi].tolist()
