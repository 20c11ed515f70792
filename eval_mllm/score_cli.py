"""``score`` subcommand: score a benchmark's answers with its official protocol.

    python -m eval_mllm.score_cli pope --annotation-dir D --question-file Q \\
        --result-file R --json

Human-readable metric lines go to stdout, warnings to stderr; with ``--json``
the last stdout line is one JSON object of the metrics.  Bad input prints one
``error: ...`` line to stderr and exits with status 2 (``--debug``: the traceback).
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys

from .benchmarks import REGISTRY
from .errors import DEBUG_ENV, pop_debug_flag, run_command
from .scorers.common import ScorerInputError, check_output_path, emit


def _summary(scorer) -> str:
    return (scorer.__doc__ or "").strip().split("\n")[0]


def _add_benchmarks(parser):
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, bench in REGISTRY.items():
        scorer = bench.scorer
        p = sub.add_parser(name, help=_summary(scorer), description=scorer.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        scorer.add_arguments(p)
        if "--submission-out" in p._option_string_actions:
            p.add_argument("--overwrite", action="store_true",
                           help="replace an existing non-empty --submission-out (default: refuse)")
        p.add_argument("--json", action="store_true",
                       help="print the metrics as one JSON object on the last line")
        p.set_defaults(func=run)


def build_parser(subparsers):
    """Add the ``score`` sub-parser (one sub-command per benchmark) to ``subparsers``.

    Every benchmark parser sets ``func=run``: call ``args.func(args)``.
    """
    parser = subparsers.add_parser("score", help="score benchmark answers",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_benchmarks(parser)
    return parser


def _check_outputs(args):
    """Outputs are checked before any file is scored: writable, not one of the inputs, and
    not a file holding something unless --overwrite."""
    out = getattr(args, "submission_out", None)
    if not out:
        return
    check_output_path(out, "--submission-out")
    for name, value in vars(args).items():
        if name != "submission_out" and isinstance(value, str) and os.path.isfile(value) \
                and os.path.exists(out) and os.path.samefile(value, out):
            raise ScorerInputError(f"--submission-out {out}: is the input --{name.replace('_', '-')}"
                                   "; give another path (inputs are never overwritten)")
    if os.path.isfile(out) and os.path.getsize(out) and not args.overwrite:
        raise ScorerInputError(f"--submission-out {out}: exists; pass --overwrite to replace it, "
                               "or choose another path")


def _scored(benchmark, metrics) -> dict:
    if metrics.get("n_scored") == 0:  # backstop: never report null scores as a result
        raise ScorerInputError(f"{benchmark}: nothing was scored ("
                               f"{metrics.get('n_missing', 0)} question(s) without a complete "
                               f"answer, dropped: {metrics.get('dropped', {})})")
    return metrics


def score(benchmark: str, **files) -> dict:
    """The metrics of one benchmark's answers: `files` are its scorer's keywords, as the
    `eval-mllm score BENCHMARK --help` flags name them (e.g. pope: annotation_dir,
    question_file, result_file). Bad input raises ScorerInputError naming the file and field."""
    from .benchmarks import get
    from .errors import EvalInputError

    try:
        bench = get(benchmark)
    except EvalInputError as exc:
        raise ScorerInputError(str(exc)) from None
    try:
        inspect.signature(bench.scorer.score).bind(**files)
    except TypeError as exc:
        accepted = ", ".join(inspect.signature(bench.scorer.score).parameters)
        raise ScorerInputError(f"{bench.name}: {exc}; its files are: {accepted}") from None
    return _scored(bench.name, bench.scorer.score(**files))


def _score(args) -> int:
    _check_outputs(args)
    emit(_scored(args.benchmark, REGISTRY[args.benchmark].scorer.from_args(args)), as_json=args.json)
    return 0


def run(args, debug=False) -> int:
    """Score ``args.benchmark`` and print the result; returns the exit code (bad input: one
    ``error:`` line and 2, through the same path as every eval_mllm command)."""
    return run_command(lambda: _score(args), debug)


def main(argv: list[str] | None = None, debug=False) -> int:
    argv, flag = pop_debug_flag(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m eval_mllm score", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of a bad input (also ${DEBUG_ENV}=1)")
    _add_benchmarks(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse errors and --help
        return exc.code if isinstance(exc.code, int) else 0
    return run(args, debug or flag)


if __name__ == "__main__":
    sys.exit(main())
