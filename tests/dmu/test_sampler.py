import numpy as np
import pytest

from clipmoe_encoder import CLIPMoEError
from clipmoe_encoder.dmu.sampler import GlobalBatchSampler, plan_epoch

# cluster sizes 10, 7, 3, 1 (ids 5, 2, 9, 0 in a shuffled order)
LABELS = np.array([5] * 10 + [2] * 7 + [9] * 3 + [0] * 1)
np.random.default_rng(0).shuffle(LABELS)


def _rank_batches(world, labels=LABELS, batch=4, seed=3, epoch=0, small="drop"):
    samplers = [GlobalBatchSampler(len(labels), batch, seed, r, world, labels, small) for r in range(world)]
    for s in samplers:
        s.set_epoch(epoch)
    return [list(s) for s in samplers]


@pytest.mark.parametrize("world", [1, 2, 4])
def test_every_global_batch_is_one_cluster_and_ranks_are_disjoint(world):
    per_rank = _rank_batches(world)
    steps = len(per_rank[0])
    assert steps == 10 // 4 + 7 // 4  # full cluster batches only
    seen = []
    for step in range(steps):
        global_batch = [i for r in range(world) for i in per_rank[r][step]]
        assert len(global_batch) == 4
        assert len({int(LABELS[i]) for i in global_batch}) == 1  # one accumulated cluster per global batch
        seen += global_batch
    assert len(seen) == len(set(seen))  # no sample twice in the epoch, ranks disjoint


def test_ranks_cover_exactly_the_single_process_plan():
    one = [i for b in _rank_batches(1)[0] for i in b]
    two = _rank_batches(2)
    joined = [i for a, b in zip(*two) for i in a + b]
    assert joined == one  # same global batches in the same order whatever the world size


def test_plan_is_a_function_of_seed_and_epoch():
    a = plan_epoch(len(LABELS), 4, seed=1, epoch=0, labels=LABELS)
    b = plan_epoch(len(LABELS), 4, seed=1, epoch=0, labels=LABELS)
    c = plan_epoch(len(LABELS), 4, seed=1, epoch=1, labels=LABELS)
    d = plan_epoch(len(LABELS), 4, seed=2, epoch=0, labels=LABELS)
    flat = lambda p: np.concatenate(p.batches).tolist()
    assert flat(a) == flat(b)
    assert flat(a) != flat(c) and flat(a) != flat(d)


def test_drop_and_merge_counts():
    drop = plan_epoch(len(LABELS), 4, 0, 0, LABELS, "drop").stats
    assert drop["clusters"] == 4 and drop["clusters_smaller_than_batch"] == 2
    assert drop["cluster_batches"] == 3 and drop["mixed_batches"] == 0
    assert drop["dropped_samples"] == 21 - 12  # remainders 2 + 3 + 3 + 1
    merge = plan_epoch(len(LABELS), 4, 0, 0, LABELS, "merge")
    assert merge.stats["mixed_batches"] == 2 and merge.stats["dropped_samples"] == 1
    used = np.concatenate(merge.batches)
    assert len(used) == len(set(used.tolist())) == 20
    mixed = [b for b in merge.batches if len(set(LABELS[b].tolist())) > 1]
    assert len(mixed) >= 1  # the small clusters really went into mixed batches


def test_negative_labels_are_left_out_and_resume_skips_batches():
    labels = np.array([0] * 8 + [-1] * 4)
    plan = plan_epoch(12, 4, 0, 0, labels)
    assert plan.stats["excluded_samples"] == 4
    assert all(labels[b].min() == 0 for b in plan.batches)
    s = GlobalBatchSampler(12, 4, 0, labels=labels)
    full = list(s)
    s.skip(1)
    assert list(s) == full[1:]


def test_shuffled_batches_without_labels_and_bad_world_size():
    plan = plan_epoch(10, 4, 0, 0)
    assert plan.stats["batches"] == 2 and plan.stats["dropped_samples"] == 2
    with pytest.raises(CLIPMoEError, match="not divisible"):
        GlobalBatchSampler(10, 5, 0, rank=0, world_size=2)
