"""Clustering at the paper's scale: compact memory-mapped features, k-means progress that leaves the
result unchanged, the long-timeout wait of the other ranks while the main process clusters, and the
benchmark script on a small size."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch.multiprocessing as mp
from sklearn.cluster import MiniBatchKMeans

from clipmoe_encoder.dmu.clustering import cluster_features, kmeans_labels
from clipmoe_encoder.dmu.features import has_features, load_features, save_features

from . import dist_workers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_kmeans_with_progress_equals_plain_minibatch_kmeans(capsys):
    x = _unit(np.random.default_rng(0), 3000, 8)
    got = kmeans_labels(x, 3, seed=5, batch_size=500, progress="clusters0 k-means image")
    want = MiniBatchKMeans(n_clusters=3, init="k-means++", n_init="auto", random_state=5, batch_size=500,
                           max_iter=500, tol=1e-5).fit_predict(x)
    assert np.array_equal(got, want)
    err = capsys.readouterr().err
    assert "clusters0 k-means image" in err and "step" in err  # the bar counts mini-batch steps
    kmeans_labels(x, 3, seed=5, batch_size=500)
    assert "k-means" not in capsys.readouterr().err  # no description, no bar


def test_features_round_trip_fp16_memory_mapped(tmp_path):
    rng = np.random.default_rng(1)
    feats = {"image": _unit(rng, 40, 6).astype(np.float16), "text": _unit(rng, 40, 6).astype(np.float16),
             "valid": np.arange(40) % 7 != 3}
    folder = str(tmp_path / "features" / "stage0")
    os.makedirs(os.path.dirname(folder))
    assert not has_features(folder)
    save_features(feats, folder)
    assert has_features(folder) and sorted(os.listdir(tmp_path / "features")) == ["stage0"]  # no temp folder left
    loaded = load_features(folder)
    for name, array in feats.items():
        assert isinstance(loaded[name], np.memmap) and loaded[name].dtype == array.dtype
        assert np.array_equal(np.asarray(loaded[name]), array)
    # clustering the memory-mapped arrays gives what the in-memory arrays give
    mapped = cluster_features(loaded["image"], loaded["text"], loaded["valid"], None, 3, 3, seed=2)
    direct = cluster_features(feats["image"], feats["text"], feats["valid"], None, 3, 3, seed=2)
    assert np.array_equal(mapped, direct) and (mapped[~feats["valid"]] == -1).all()


def test_save_features_replaces_a_partial_write(tmp_path):
    folder = str(tmp_path / "stage1")
    os.makedirs(folder + ".tmp")
    with open(os.path.join(folder + ".tmp", "image.npy"), "w") as f:
        f.write("truncated by a kill")
    feats = {"image": np.zeros((2, 3), np.float16), "text": np.ones((2, 3), np.float16), "valid": np.ones(2, bool)}
    save_features(feats, folder)
    assert np.array_equal(load_features(folder)["text"], feats["text"]) and not os.path.exists(folder + ".tmp")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _outcomes(tmp_path, use_long_wait):
    out = tmp_path / ("long" if use_long_wait else "default")
    out.mkdir()
    # default group: 3 s timeout; rank 0 works alone for 6 s
    mp.spawn(dist_workers.main_alone_worker, args=(2, _free_port(), 3, 6, use_long_wait, str(out)), nprocs=2, join=True)
    return [(out / f"rank{r}.txt").read_text() for r in range(2)]


@pytest.mark.slow
def test_other_ranks_outlast_the_default_timeout_while_the_main_process_works_alone(tmp_path):
    assert _outcomes(tmp_path, use_long_wait=True) == ["ok", "ok"]
    # control: the same solo work followed by a barrier of the default group times the waiting rank out
    control = _outcomes(tmp_path, use_long_wait=False)
    assert control[1].startswith("error:"), control


@pytest.mark.slow
def test_bench_script_nests_labels_over_three_stages(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "bench_clustering.py"), "--samples", "3000", "3000", "--dim", "16",
           "--workdir", str(tmp_path / "work"), "--json", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert len(rows) == 2 and all(r["samples"] == 3000 and r["dim"] == 16 for r in rows)
    for row in rows:
        stages = row["stages"]
        assert [s["label_ids"] for s in stages] == [9, 81, 729]  # 3 x 3 clusters per stage, nested
        assert all(s["max_label"] < s["label_ids"] for s in stages)
        assert stages[0]["nonempty"] == 9 and stages[0]["nonempty"] < stages[1]["nonempty"] < stages[2]["nonempty"]
        assert all(s["seconds"] > 0 for s in stages) and row["peak_rss_gib"] > 0
    assert rows[0]["labels_sha1"] == rows[1]["labels_sha1"]  # deterministic from the seed, in a fresh process
    assert "k-means" in done.stderr  # the progress bars
