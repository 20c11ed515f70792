#!/usr/bin/env python
"""Time and peak memory of DMU's clustering phase at a given scale, on random unit features.

For each --samples N, a fresh process writes 3 stages of random (N, D) fp16 unit features in the
pipeline's layout (features/stage<s>/{image,text,valid}.npy), then another fresh process runs the
pipeline's clustering on them exactly as the main process does in a run (load_features memory-maps
them, cluster_features nests the labels: 9 -> 81 -> 729 ids with 3 clusters per modality) and
reports the wall time per stage and its peak resident memory (VmHWM: the file pages it maps count).

  python scripts/bench_clustering.py --samples 1200000 --dim 768 --json bench.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

CHUNK = 65536  # rows generated at a time, so writing the features needs little memory


def _write_random_features(folder, samples, dim, seed):
    """Random unit vectors, fp16, in the layout save_features writes (written in chunks through open_memmap)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in ("image", "text"):
        out = np.lib.format.open_memmap(os.path.join(folder, f"{name}.npy"), mode="w+", dtype=np.float16, shape=(samples, dim))
        for start in range(0, samples, CHUNK):
            x = rng.standard_normal((min(CHUNK, samples - start), dim), dtype=np.float32)
            out[start:start + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
        out.flush()
        del out
    np.save(os.path.join(folder, "valid.npy"), np.ones(samples, dtype=bool))


def _peak_rss_gib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB -> GiB
    raise RuntimeError("no VmHWM in /proc/self/status")


def generate(args):
    for s in range(args.stages):
        _write_random_features(os.path.join(args.workdir, "features", f"stage{s}"), args.samples[0], args.dim, args.seed + s)


def measure(args):
    """The clustering phase of a run, stage after stage, as pipeline._stage_labels runs it on the main process."""
    from clipmoe_encoder.dmu.clustering import cluster_features
    from clipmoe_encoder.dmu.features import load_features

    labels, stages = None, []
    for s in range(args.stages):
        t0 = time.perf_counter()
        feats = load_features(os.path.join(args.workdir, "features", f"stage{s}"))
        labels = cluster_features(feats["image"], feats["text"], feats["valid"], labels, args.clusters, args.clusters,
                                  args.seed + 100 * s, progress=f"clusters{s}")
        del feats
        stages.append({"stage": s, "seconds": round(time.perf_counter() - t0, 2), "nonempty": int(len(np.unique(labels[labels >= 0]))),
                       "label_ids": (args.clusters ** 2) ** (s + 1), "max_label": int(labels.max())})
        print(json.dumps(dict(stages[-1], peak_rss_gib=round(_peak_rss_gib(), 3))), file=sys.stderr, flush=True)  # a killed run still tells
    row = {"samples": args.samples[0], "dim": args.dim, "stages": stages, "total_seconds": round(sum(x["seconds"] for x in stages), 2),
           "peak_rss_gib": round(_peak_rss_gib(), 3), "labels_sha1": hashlib.sha1(labels.tobytes()).hexdigest()}
    print(json.dumps(row), flush=True)


def _child(mode, args, samples, workdir):
    cmd = [sys.executable, os.path.abspath(__file__), f"--{mode}", "--samples", str(samples), "--dim", str(args.dim),
           "--stages", str(args.stages), "--clusters", str(args.clusters), "--seed", str(args.seed), "--workdir", workdir]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)  # stderr (progress bars) passes through
    return done.stdout


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, nargs="+", required=True, help="sizes to measure, each in a fresh process")
    parser.add_argument("--dim", type=int, default=768, help="embedding width (768: ViT-L/14's projection)")
    parser.add_argument("--stages", type=int, default=3, help="clustering stages (3: 4 experts)")
    parser.add_argument("--clusters", type=int, default=3, help="k-means clusters per modality (the paper's 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="where the features are written (default: a temporary folder, removed after)")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.generate:
        return generate(args)
    if args.measure:
        return measure(args)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir and os.path.dirname(os.path.abspath(args.workdir))) as tmp:
        for i, samples in enumerate(args.samples):
            workdir = os.path.join(args.workdir or tmp, f"n{samples}_{i}")
            _child("generate", args, samples, workdir)
            rows.append(json.loads(_child("measure", args, samples, workdir).strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
            if not args.workdir:
                shutil.rmtree(workdir)  # the next size's features need the disk space
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
