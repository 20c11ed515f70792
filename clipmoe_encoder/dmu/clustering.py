"""Pseudo-labels for MCL: k-means on image and text embeddings separately, combined and accumulated.

Per stage, label = text_label * k_img + image_label (k_img * k_txt joint clusters); across stages
labels accumulate as prev * (k_img * k_txt) + label, giving 9, 81, 729 ids for 3 x 3 clusters.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import MiniBatchKMeans


def kmeans_labels(features: np.ndarray, k: int, seed: int, batch_size: int = 1_000_000, max_iter: int = 500) -> np.ndarray:
    """MiniBatchKMeans (k-means++ init, n_init='auto', seeded) as the official notebook sets it up.
    Embeddings are unit vectors, so Euclidean k-means orders like cosine."""
    features = np.asarray(features, dtype=np.float32)
    k = min(k, len(features))
    model = MiniBatchKMeans(n_clusters=k, init="k-means++", n_init="auto", random_state=seed,
                            batch_size=min(batch_size, len(features)), max_iter=max_iter, tol=1e-5)
    return model.fit_predict(features).astype(np.int64)


def stage_labels(image_features, text_features, k_img: int, k_txt: int, seed: int) -> np.ndarray:
    """Joint cluster of one stage: text_label * k_img + image_label."""
    image = kmeans_labels(image_features, k_img, seed)
    text = kmeans_labels(text_features, k_txt, seed + 1)
    return text * k_img + image


def accumulate_labels(previous, current, clusters_per_stage: int) -> np.ndarray:
    """Accumulated id = previous * clusters_per_stage + current (previous None at stage 0).
    Negative ids (samples left out) stay negative."""
    current = np.asarray(current, dtype=np.int64)
    if previous is None:
        return current
    previous = np.asarray(previous, dtype=np.int64)
    out = previous * clusters_per_stage + current
    out[(previous < 0) | (current < 0)] = -1
    return out


def cluster_features(image_features, text_features, valid, previous, k_img: int, k_txt: int, seed: int) -> np.ndarray:
    """One stage of clustering over the valid samples; invalid samples get label -1."""
    valid = np.asarray(valid, dtype=bool)
    labels = np.full(len(valid), -1, dtype=np.int64)
    labels[valid] = stage_labels(np.asarray(image_features)[valid], np.asarray(text_features)[valid], k_img, k_txt, seed)
    return accumulate_labels(previous, labels, k_img * k_txt)
