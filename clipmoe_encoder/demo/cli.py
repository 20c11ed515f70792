"""`clipmoe demo --out DIR [--quick]`: the embedded default run (see run.py)."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="procedural image-caption world -> dense CLIP -> direct FT / upcycling / DMU -> zero-shot report",
        description="Trains a small dense CLIP from scratch on a procedural world of coloured shapes, builds "
                    "CLIP-MoE by Diversified Multiplet Upcycling and both baselines, and compares the four models "
                    "zero-shot on held-out scenes. Rerunning the same command resumes.")
    p.add_argument("--out", required=True, help="output directory (world, checkpoints, report.md, results.json, PNGs)")
    p.add_argument("--quick", action="store_true", help="toy sizes (about 2 minutes on 2 cores), for tests and CI")
    p.set_defaults(func=run_command)


def run_command(args) -> int:
    from .run import run_demo

    summary = run_demo(args.out, quick=args.quick)
    from .report import results_table

    print(results_table(summary["results"], summary["chance"]))
    print(f"total {sum(summary['timings'].values()):.1f} s; report: {args.out}/report.md")
    return 0
