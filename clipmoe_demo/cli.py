"""`clipmoe-demo` (also `python -m clipmoe_demo`): the embedded default runs.

    clipmoe-demo encoder --out DIR [--quick]   procedural world -> dense CLIP -> direct FT /
                                               upcycling / DMU -> zero-shot report
    clipmoe-demo chain --out DIR [--quick]     the encoder demo -> LLaVA (dense vs CLIP-MoE tower,
                                               DeepSpeed scripts) -> benchmarks -> one report

Rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import sys

from . import chain as chain_package


def _encoder(args) -> int:
    from .encoder.report import results_table
    from .encoder.run import run_demo

    summary = run_demo(args.out, quick=args.quick, seeds=args.seeds, workers=args.workers)
    print(results_table(summary["results"], summary["chance"]))
    print(f"total {sum(summary['timings'].values()):.1f} s; report: {args.out}/report.md")
    return 0


def _chain(args) -> int:
    from .chain.run import run_chain

    run_chain(args.out, quick=args.quick)
    return 0


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,2, got {text!r}") from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct non-negative integers, got {text!r}")
    return seeds


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipmoe-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser(
        "encoder", help="procedural image-caption world -> dense CLIP -> direct FT / upcycling / DMU -> zero-shot report",
        description="Trains a small dense CLIP from scratch on a procedural world of coloured shapes, builds "
                    "CLIP-MoE by Diversified Multiplet Upcycling and both baselines, and compares the four models "
                    "zero-shot on held-out scenes. Rerunning the same command resumes.")
    e.add_argument("--out", required=True, help="output directory (world, checkpoints, report.md, results.json, PNGs)")
    e.add_argument("--quick", action="store_true", help="toy sizes, for tests and CI")
    e.add_argument("--seeds", type=_seeds, default=None,
                   help="comma-separated training seeds (default 0,1,2); a rerun with other seeds reuses the ones done")
    e.add_argument("--workers", type=_positive, default=None, help="worker processes training seeds side by side (default 2)")
    e.set_defaults(func=_encoder)
    c = sub.add_parser("chain", help="encoder demo -> LLaVA (dense vs CLIP-MoE tower) -> benchmarks -> report",
                       description=chain_package.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--out", required=True, help="output directory (demo/, llava/, benchmarks/, report.md)")
    c.add_argument("--quick", action="store_true", help="toy sizes, for tests and CI")
    c.set_defaults(func=_chain)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from clipmoe_encoder.errors import CLIPMoEError
    from eval_mllm.errors import EvalInputError

    from .interrupt import process_tree_ends_on_interrupt

    interrupted = (f"clipmoe-demo {args.command}: interrupted; its worker processes are stopped. "
                   "Rerun the same command to resume from the last finished stage.")
    try:
        with process_tree_ends_on_interrupt(interrupted):
            return args.func(args)
    except (CLIPMoEError, EvalInputError) as err:  # bad input: one line, no traceback
        print(f"clipmoe-demo {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
