"""Pseudo-labels for MCL: k-means on image and text embeddings separately, combined and accumulated.

Per stage, label = text_label * k_img + image_label (k_img * k_txt joint clusters); across stages
labels accumulate as prev * (k_img * k_txt) + label, giving 9, 81, 729 ids for 3 x 3 clusters.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import MiniBatchKMeans
from tqdm.auto import tqdm


class _MiniBatchKMeansWithProgress(MiniBatchKMeans):
    """MiniBatchKMeans that advances a tqdm bar once per mini-batch step. It hooks the per-step
    convergence check (sklearn calls it once per step with the step count) and defers to it, so the
    fitted centers and labels are exactly MiniBatchKMeans's."""

    progress_desc = None  # set on the instance; not an __init__ parameter, so sklearn's get_params is unchanged

    def _mini_batch_convergence(self, step, n_steps, n_samples, centers_squared_diff, batch_inertia):
        bar = getattr(self, "_bar", None)
        if bar is None:
            bar = self._bar = tqdm(total=n_steps, desc=self.progress_desc, unit="step", dynamic_ncols=True,
                                   disable=self.progress_desc is None)
        bar.update(1)
        return super()._mini_batch_convergence(step, n_steps, n_samples, centers_squared_diff, batch_inertia)

    def fit(self, X, y=None, sample_weight=None):
        try:
            return super().fit(X, y, sample_weight)
        finally:  # converged early or ran all steps: the bar ends where the fit stopped
            if getattr(self, "_bar", None) is not None:
                self._bar.close()
                del self._bar


def kmeans_labels(features: np.ndarray, k: int, seed: int, batch_size: int = 1_000_000, max_iter: int = 500,
                  progress: str | None = None) -> np.ndarray:
    """MiniBatchKMeans (k-means++ init, n_init='auto', seeded) as the official notebook sets it up.
    Embeddings are unit vectors, so Euclidean k-means orders like cosine. The features may be a
    memory-mapped fp16 array: they are read into one float32 copy (sklearn's working dtype).
    progress: a tqdm description to show a bar of the mini-batch steps, None for no bar."""
    features = np.asarray(features, dtype=np.float32)
    k = min(k, len(features))
    model = _MiniBatchKMeansWithProgress(n_clusters=k, init="k-means++", n_init="auto", random_state=seed,
                                         batch_size=min(batch_size, len(features)), max_iter=max_iter, tol=1e-5)
    model.progress_desc = progress
    return model.fit_predict(features).astype(np.int64)


def stage_labels(image_features, text_features, k_img: int, k_txt: int, seed: int, progress: str | None = None) -> np.ndarray:
    """Joint cluster of one stage: text_label * k_img + image_label."""
    image = kmeans_labels(image_features, k_img, seed, progress=progress and f"{progress} k-means image")
    text = kmeans_labels(text_features, k_txt, seed + 1, progress=progress and f"{progress} k-means text")
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


def _rows(features, valid):
    """The valid rows; all of them without a copy when every sample is valid (the usual case)."""
    return features if valid.all() else features[valid]


def cluster_features(image_features, text_features, valid, previous, k_img: int, k_txt: int, seed: int,
                     progress: str | None = None) -> np.ndarray:
    """One stage of clustering over the valid samples; invalid samples get label -1.
    The feature arrays may be memory-mapped (load_features)."""
    valid = np.asarray(valid, dtype=bool)
    labels = np.full(len(valid), -1, dtype=np.int64)
    labels[valid] = stage_labels(_rows(image_features, valid), _rows(text_features, valid), k_img, k_txt, seed, progress)
    return accumulate_labels(previous, labels, k_img * k_txt)
