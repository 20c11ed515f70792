import numpy as np

from clipmoe_encoder.dmu.clustering import (
    accumulate_labels,
    cluster_features,
    stage_labels,
)


def _blobs(centers, assignment, seed):
    rng = np.random.default_rng(seed)
    x = np.asarray(centers, dtype=np.float32)[assignment] + rng.normal(0, 0.01, (len(assignment), len(centers[0])))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _same_partition(a, b):
    """Cluster ids are arbitrary: the partitions must agree up to renaming."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_stage_label_is_text_times_k_plus_image():
    img_truth = np.array([0, 1, 2] * 6)
    txt_truth = np.array([0] * 6 + [1] * 6 + [2] * 6)
    img = _blobs(np.eye(3), img_truth, 0)
    txt = _blobs(np.eye(4)[:3], txt_truth, 1)
    labels = stage_labels(img, txt, 3, 3, seed=0)
    assert _same_partition(labels, txt_truth * 3 + img_truth)
    assert len(set(labels.tolist())) == 9
    assert set((labels // 3).tolist()) == {0, 1, 2} and set((labels % 3).tolist()) == {0, 1, 2}
    # the image part of the label follows the image clusters, the text part the text clusters
    assert _same_partition(labels % 3, img_truth) and _same_partition(labels // 3, txt_truth)


def test_accumulation_over_stages():
    assert accumulate_labels(None, [4, 8], 9).tolist() == [4, 8]
    assert accumulate_labels([4, 8], [1, 0], 9).tolist() == [37, 72]
    assert accumulate_labels([37, 72], [8, 8], 9).tolist() == [341, 656]
    assert accumulate_labels([3, -1], [1, 2], 9).tolist() == [28, -1]


def test_invalid_samples_get_no_label_and_accumulation_grows():
    truth = np.array([0, 1, 2] * 4)
    img = _blobs(np.eye(3), truth, 2)
    txt = _blobs(np.eye(3), truth[::-1].copy(), 3)
    valid = np.ones(12, dtype=bool)
    valid[5] = False
    first = cluster_features(img, txt, valid, None, 3, 3, seed=0)
    assert first[5] == -1 and (first[valid] >= 0).all() and first.max() < 9
    second = cluster_features(img, txt, valid, first, 3, 3, seed=1)
    assert second[5] == -1 and (second[valid] // 9 == first[valid]).all()
