#!/usr/bin/env python
"""One check of a real CUDA GPU: `pytest -m gpu` (tests/gpu/test_real_gpu.py), then the MoE
benchmark of the L/14-336 tower in bf16; prints one summary. Without CUDA it prints one skip line
and exits 0. Meant to finish in under 8 minutes on one GPU.

    scripts/gpu_check.sh            # or: python scripts/gpu_check.py [--json-out FILE] [--log-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = ["scripts/bench_moe.py", "--model", "l14-336", "--device", "cuda", "--dtype", "bf16", "--batch", "32", "--json"]


def _run(cmd, timeout):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        out, rc = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "timeout"
    return rc, out, time.monotonic() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json-out", help="also write the summary to this file (JSON)")
    parser.add_argument("--log-dir", help="also write the whole logs here (tests.log, bench.log): the console shows their ends")
    args = parser.parse_args(argv)

    try:
        import torch
    except ImportError:
        print(f"gpu_check: error: torch is not installed for {sys.executable} (set PYTHON to the project's environment)")
        return 2
    if not torch.cuda.is_available():
        print("gpu_check: skipped, no CUDA device visible to torch (nothing to check on this machine)")
        return 0
    device = f"{torch.cuda.get_device_name(0)} (SM {'.'.join(map(str, torch.cuda.get_device_capability(0)))}, " \
             f"torch {torch.__version__}, CUDA {torch.version.cuda})"
    print(f"gpu_check on {device}", flush=True)

    rc_tests, log_tests, t_tests = _run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                                         "tests/gpu/test_real_gpu.py", "-rfEs", "--tb=short"], timeout=300)
    print(log_tests[-6000:], flush=True)
    rc_bench, log_bench, t_bench = _run([sys.executable, *BENCH], timeout=240)
    print(log_bench[-3000:], flush=True)
    if args.log_dir:
        os.makedirs(args.log_dir, exist_ok=True)
        for name, log in (("tests.log", log_tests), ("bench.log", log_bench)):
            with open(os.path.join(args.log_dir, name), "w") as f:
                f.write(log)
    bench = None
    if rc_bench == 0:
        bench = json.loads(log_bench.strip().splitlines()[-1])

    tests_line = next((line for line in reversed(log_tests.splitlines()) if " in " in line and ("passed" in line or "failed" in line)), "no result")
    summary = {"device": device, "tests": {"rc": rc_tests, "result": tests_line.strip("= "), "seconds": round(t_tests)},
               "bench": {"rc": rc_bench, "seconds": round(t_bench)}}
    if bench:
        summary["bench"].update({k: bench[k] for k in ("moe_over_dense", "naive_over_ours", "flop_floor", "peak_memory_mb", "median_s")})
    ok = rc_tests == 0 and rc_bench == 0
    print("gpu_check summary:", json.dumps(summary))
    print(f"gpu_check: {'PASS' if ok else 'FAIL'} - tests: {summary['tests']['result']}; bench: "
          + (f"moe/dense {bench['moe_over_dense']:.3f}, naive/ours {bench['naive_over_ours']:.3f}, "
             f"peak MB {bench['peak_memory_mb']}" if bench else f"failed ({rc_bench})"))
    if args.json_out:
        with open(args.json_out + ".tmp", "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(args.json_out + ".tmp", args.json_out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
