"""eval_mllm command line.

    python -m eval_mllm generate --model-path DIR --question-file Q --image-folder IMGS --answers-file A
    python -m eval_mllm merge OUT chunk0.jsonl chunk1.jsonl ... [--question-file Q]
    python -m eval_mllm run --model DIR --benchmarks pope,mmbench --data-root DATA --out OUT
    python -m eval_mllm score BENCHMARK ...        (see eval_mllm.score_cli)

Bad input prints one ``error: ...`` line and exits with status 2; ``--debug`` (anywhere on
the line) or ``EVAL_MLLM_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys

from .errors import DEBUG_ENV, pop_debug_flag, run_command
from .scorers.common import check_output_path


def _add_question_args(p):
    p.add_argument("--question-file", required=True,
                   help="LLaVA question JSONL, LLaVA ScienceQA JSON (.json) or MMBench TSV (.tsv)")
    p.add_argument("--question-format", choices=["jsonl", "scienceqa", "mmbench"],
                   help="default: from the extension (.tsv mmbench, .json scienceqa, else jsonl)")
    p.add_argument("--all-rounds", action="store_true", help="MMBench: one answer per option rotation")
    p.add_argument("--no-single-pred-prompt", dest="single_pred_prompt", action="store_false",
                   help="ScienceQA/MMBench: do not append the 'Answer with the option's letter' line")
    p.add_argument("--lang", default="en", choices=["en", "cn"], help="MMBench instruction language")


def _add_model_args(p, model_flag="--model-path"):
    p.add_argument(model_flag, dest="model_path", required=True,
                   help="llava-torch checkpoint dir, or a transformers Llava dir (config model_type 'llava')")
    p.add_argument("--model-base", help="llava-torch: base LLM for LoRA / projector-only checkpoints")
    p.add_argument("--conv-mode", default="vicuna_v1", help="LLaVA conversation template (default vicuna_v1)")
    p.add_argument("--max-new-tokens", type=int,
                   help="default 128 (LLaVA's model_vqa_loader); `run`: the benchmark's own default")
    p.add_argument("--min-new-tokens", type=int, default=0,
                   help="force at least this many tokens (smoke tests with untrained models)")
    p.add_argument("--batch-size", type=int, default=1, help="questions per generate call (left padding)")
    p.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="skip (and count) questions whose image is missing or unreadable")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m eval_mllm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    # Taken out of argv before parsing (pop_debug_flag), so it may stand anywhere; here for --help.
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of a bad input (also ${DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="answer a question file (LLaVA model_vqa_loader format)")
    _add_question_args(g)
    _add_model_args(g)
    g.add_argument("--image-folder", default="", help="folder the question 'image' paths are relative to")
    g.add_argument("--answers-file", required=True, help="answers JSONL (appended to; reruns resume)")
    g.add_argument("--overwrite", action="store_true",
                   help="an --answers-file that is not this question file's answers is moved "
                        "to ANSWERS.bak-N and generation starts afresh (default: refuse)")
    g.add_argument("--num-chunks", type=int, default=1)
    g.add_argument("--chunk-idx", type=int, default=0)

    m = sub.add_parser("merge", help="merge chunk answer files")
    m.add_argument("out")
    m.add_argument("parts", nargs="+")
    m.add_argument("--question-file", help="order answers as in this question file")
    m.add_argument("--question-format", choices=["jsonl", "scienceqa", "mmbench"])
    m.add_argument("--all-rounds", action="store_true")
    m.add_argument("--overwrite", action="store_true", help="replace an existing OUT (default: refuse)")

    r = sub.add_parser("run", help="generate + score benchmarks and write results.json / results.md")
    _add_model_args(r, "--model")
    r.add_argument("--benchmarks", required=True, help="comma-separated, e.g. pope,mme,mmbench")
    r.add_argument("--data-root", required=True, help="benchmark data laid out as in docs/eval.md")
    r.add_argument("--out", required=True, help="output folder (answers/, results.json, results.md)")
    r.add_argument("--limit", type=int, help="only the first N questions per benchmark (smoke runs)")
    r.add_argument("--all-rounds", action="store_true", help="MMBench circular evaluation")
    r.add_argument("--model-name", help="row label in the report (default: checkpoint folder name)")
    r.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty --out this command did not write, and set aside "
                        "answers files that are not this benchmark's (default: refuse)")

    sub.add_parser("score", help="score answers (python -m eval_mllm score BENCHMARK --help)",
                   add_help=False)
    return parser


def _generate(args):
    from .generate import check_image_files, check_resumable, generate
    from .models import load_model
    from .questions import get_chunk, read_questions

    questions = read_questions(args.question_file, args.question_format, args.all_rounds,
                               args.single_pred_prompt, args.lang)
    # Every input and the destination are checked before the (slow) model load.
    check_output_path(args.answers_file, "--answers-file")
    check_resumable(args.answers_file, questions, args.overwrite)
    if not args.skip_bad_images:
        check_image_files(get_chunk(questions, args.num_chunks, args.chunk_idx), args.image_folder)
    model = load_model(args.model_path, args.model_base, args.conv_mode, args.max_new_tokens or 128,
                       args.min_new_tokens, args.device)
    stats = generate(questions, model, args.answers_file, args.image_folder, args.batch_size,
                     args.num_chunks, args.chunk_idx, args.skip_bad_images, args.progress)
    print(f"{args.answers_file}: {stats.n_generated} generated, {stats.n_resumed} already answered, "
          f"{stats.n_skipped_bad_image} skipped (bad image) of {stats.n_questions} in this chunk")
    for line in stats.skipped:
        print(f"skipped: {line}", file=sys.stderr)
    return 0


def _merge(args):
    from .generate import merge
    from .questions import read_questions

    questions = read_questions(args.question_file, args.question_format, args.all_rounds) \
        if args.question_file else None
    stats = merge(args.out, args.parts, questions, args.overwrite)
    dropped = "".join(f", {n} dropped ({reason})" for reason, n in sorted(stats.dropped.items()))
    print(f"{args.out}: {stats.n_written} answers written of {stats.n_read} read{dropped}")
    return 0


def _run(args):
    from .runner import run

    results = run(args.model_path, args.benchmarks, args.out, args.data_root, limit=args.limit,
                  all_rounds=args.all_rounds, model_name=args.model_name, overwrite=args.overwrite,
                  model_base=args.model_base, conv_mode=args.conv_mode, max_new_tokens=args.max_new_tokens,
                  min_new_tokens=args.min_new_tokens, batch_size=args.batch_size, device=args.device,
                  skip_bad_images=args.skip_bad_images, progress=args.progress)
    print(f"{results['out']}/results.md")
    return 0


def main(argv=None) -> int:
    argv, debug = pop_debug_flag(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "score":
        from . import score_cli

        return score_cli.main(argv[1:], debug)
    args = build_parser().parse_args(argv)
    command = {"generate": _generate, "merge": _merge, "run": _run}[args.command]
    return run_command(lambda: command(args), debug)


if __name__ == "__main__":
    sys.exit(main())
