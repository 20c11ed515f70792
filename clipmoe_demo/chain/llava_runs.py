"""The two LLaVA runs of the chain: the same small LLM, data and budget, once with the dense base
CLIP's vision tower (LLaVA's stock CLIPVisionTower on a local directory) and once with the
CLIP-MoE (DMU) tower. Both stages go through the project's DeepSpeed scripts (pretrain.sh,
finetune.sh, shipped in `llava_integration.launch_dir()`) in their CPU tiny mode, with the TINY_*
environment overrides pointing them at this chain's LLM, data and output folders, and one-rank
trainer flags (ONE_RANK_FLAGS: ZeRO-2 for both stages, no gradient checkpointing).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial

from llava_integration import launch_dir

# the folder holding the packages (a checkout, or site-packages): the children import this code from it
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNS = ("dense", "clip-moe")
BENCHMARKS = ("pope", "gqa", "mmbench")  # eval_mllm benchmark names, in the report's order
DONE_MARKER = "chain_stage_done.json"


@dataclass
class LlavaPlan:
    """Sizes and schedule of both LLaVA runs (identical for the two towers)."""

    n_train: int  # training scenes (stage 1 captions and stage 2 conversations)
    n_test: int  # held-out scenes the benchmarks ask about
    llm_hidden: int
    llm_layers: int
    # Large enough that every word of the world is one piece (400 split "circle" into 5 and
    # pushed multiple-choice conversations past the 256-token limit of the scripts' tiny mode).
    vocab_size: int
    batch: int  # per device = global (one CPU rank)
    stage1_epochs: float
    stage2_epochs: float
    stage1_lr: float = 1e-3  # LLaVA-1.5's projector learning rate
    # LLaVA-1.5 fine-tunes a pretrained Vicuna at 2e-5; this LLM knows only a few hundred steps of
    # text and stage 2 has a few hundred to a thousand steps, so it needs a from-scratch learning
    # rate. Measured before the LM training step existed (random-init LLM): at 1e-3 the quick run's
    # LLM still answered every short-answer question with an empty string after 128 steps (loss
    # 2.6); at 3e-3 it gave answers of the right kind (loss 0.75 after 256 steps).
    stage2_lr: float = 3e-3
    lm_steps: int = 100  # causal-LM training of the LLM on the world's text, before LLaVA's stage 1
    lm_lr: float = 3e-3
    # The LM trains on one torch thread beside the DMU demo and on two from this step on, a fixed
    # step so that the model does not depend on timing (0: one thread throughout, the full plan's:
    # with the demo's workers niced it keeps a core and finishes about when they do, see run.py).
    lm_two_threads_from: int = 0
    max_new_tokens: int = 8  # answers are a word, a letter or yes/no
    eval_batch: int = 16
    seed: int = 0

    def steps(self, n_records: int, epochs: float) -> int:
        return max(1, round(-(-n_records // self.batch) * epochs))


def make_plan(quick: bool) -> LlavaPlan:
    if quick:
        return LlavaPlan(n_train=192, n_test=20, llm_hidden=64, llm_layers=2, vocab_size=1000, batch=8,
                         stage1_epochs=1, stage2_epochs=6, eval_batch=32, lm_two_threads_from=50)
    # Full: both runs side by side, a stage-2 step (hidden 128, 36 image tokens, batch 16) took
    # 0.4-0.5 s on one of 2 cores; 600 steps per run made the LLaVA part 8 minutes (GQA-style above
    # its majority rate, POPE and MMBench-style at chance), so 1200 steps on twice the scenes.
    # LM: 600 steps left it unable to look a pair up in a caption (text probe, balanced 50), and both
    # LLaVAs answered "Yes" to every POPE-style question. 3000 steps (in a thread beside the DMU
    # demo, run.py) and stage 2 at 3e-4, a fine-tuning rate for an LM that already knows the world's
    # text, made the dense tower's LLaVA 65.1 POPE-style (yes-ratio 63); at 3e-3 (the from-scratch
    # rate) stage 2 erased what the LM knew (the feature probe on that LM stayed at 50); dense-tower runs
    # at 1e-3 gave 60.6 and at 1e-4 61.0 (scripts/demo_probes/llava_variant.py). That LM still
    # answered text-only four-option questions at chance (19.0); its text is now denser and about
    # fresh scenes (language_model.TEXT_TURNS), the lever the LM probe measured: with it, 3,000 steps
    # gave POPE-style 83.6 / 83.5 (dense / CLIP-MoE) and GQA-style 43.6 / 43.4, but the LM, on 1 core
    # beside the DMU demo (1,293 s against the demo's 1,013 s), held the chain up for 280 s (31.6 min
    # in all). 2,500 steps did not save that time (31.2 min, the LM 1,196 s beside a 1,092-s demo)
    # and both LLaVAs fell back to chance on POPE-style (50.1 / 49.5, yes-ratio 72): 3,000 steps.
    # MMBench-style stayed at chance (22.7 / 24.0) with an LM at 19.5 four-option accuracy on text;
    # the LM's text lost its short-answer turn and the stage-1 captions (TEXT_TURNS), which took that to 35.0,
    # and the chain to MMBench-style 34.0 / 33.3, POPE-style 77.9 / 73.7, GQA-style 42.7 / 44.4 (an AVX2 machine).
    # That LM did not name the letter of an answer it could find; six four-option turns and two short ones per
    # text took it to 76.5 on text (TEXT_TURNS), and stop 31's chain rerun on it (llava_variant.py
    # --llm) to MMBench-style 49.3 / 49.3, POPE-style 81.9 / 81.9. Its texts are 1.6 times as long;
    # with the LM on 1 thread, then 2 from step 1,500, the full chain on it (stop 32, AVX-512) gave
    # MMBench-style 46.7 / 50.7, POPE-style 81.5 / 82.2, GQA-style 41.8 / 41.8, in 35.7 minutes
    # (4,149 CPU-seconds): the LM shared both cores with the demo's workers and finished last. Now the
    # workers yield it a core (run.py's DEMO_NICE) and it keeps one thread, without the attention mask it
    # never needed (_collate); both LLaVA stages run under ZeRO-2 without gradient checkpointing
    # (ONE_RANK_FLAGS), the demo decodes each image once (cache_samples). With 2,700 LM and 1,050
    # stage-2 steps: 30.7 minutes (LM and demo both 1,420 s, LLaVA 408 s), MMBench-style 48.7 / 50.0,
    # POPE-style 82.1 / 82.1, GQA-style 41.8 / 43.1; with 750 stage-2 steps: 25.2 minutes (LM 1,250 s,
    # demo 1,222 s, LLaVA 249 s; a quieter machine too), MMBench-style 47.3 / 50.7, POPE-style
    # 81.6 / 82.2, GQA-style 41.2 / 40.2 (stop 33, AVX-512). Those hold for this LM seed (0): LMs of
    # seeds 1-4 gave MMBench-style 28.7-49.3 (≥ 45 for seed 4 alone) and, for seed 2, POPE-style at
    # chance; lm_lr=1e-3, a third layer at the same time or the answers' loss weighted 10 times did not
    # make the four-option skill reliable (scripts/demo_probes/lm_variant.py, README there).
    return LlavaPlan(n_train=2400, n_test=150, llm_hidden=128, llm_layers=2, vocab_size=1000, batch=16,
                     stage1_epochs=1, stage2_epochs=5, lm_steps=2700, stage2_lr=3e-4)


# ---------------------------------------------------------------------------------------------
# inputs of the runs: the towers (the LLM: language_model.py)

def dense_tower(clip_dir: str, out_dir: str) -> str:
    """The dense CLIP's vision half as a stock LLaVA tower: a CLIPVisionModel + CLIPImageProcessor
    directory, which LLaVA's own builder takes as a local path."""
    from transformers import CLIPImageProcessor, CLIPVisionModel

    model = CLIPVisionModel.from_pretrained(clip_dir)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    CLIPImageProcessor.from_pretrained(clip_dir).save_pretrained(out_dir)
    return out_dir


def clipmoe_tower(clipmoe_dir: str, out_dir: str) -> str:
    """The CLIP-MoE's vision half as a vision-only CLIP-MoE checkpoint (our tower's input)."""
    from transformers import CLIPImageProcessor

    from clipmoe_encoder import CLIPMoEVisionModel

    model = CLIPMoEVisionModel.from_pretrained(clipmoe_dir)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    CLIPImageProcessor.from_pretrained(clipmoe_dir).save_pretrained(out_dir)
    return out_dir


def tower_names(demo_models: dict, out_dir: str) -> dict[str, str]:
    """--vision_tower of each run: a plain directory goes to LLaVA's builder, clipmoe:<dir> to ours."""
    return {"dense": dense_tower(demo_models["base"], os.path.join(out_dir, "dense")),
            "clip-moe": "clipmoe:" + clipmoe_tower(demo_models["clip-moe"], os.path.join(out_dir, "clip-moe"))}


# ---------------------------------------------------------------------------------------------
# one run: stage 1, stage 2, answers

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _n_records(path: str) -> int:
    with open(path) as f:
        return len(json.load(f))


def child_env(extra: dict | None = None) -> dict:
    """Environment of a child process: this interpreter's environment first on PATH, the repo
    importable, one thread (the other run works on the second core meanwhile)."""
    env = dict(os.environ)
    env.update(PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
               PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", **(extra or {}))
    return env


def _run_logged(cmd: list[str], env: dict, log_path: str, what: str) -> None:
    with open(log_path, "w") as log:
        log.write("$ " + shlex.join(cmd) + "\n")
        log.flush()
        # Through tied_child: killed outright, this process leaves no launcher or trainer running.
        tied = [sys.executable, "-m", "clipmoe_demo.tied_child", str(os.getpid()), *cmd]
        proc = subprocess.run(tied, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"{what} failed (exit {proc.returncode}); log {log_path}:\n{tail}")


def _script(name: str, env_overrides: dict, extra: list[str], log_path: str) -> float:
    env = child_env(dict(PYTHON=sys.executable, CLIPMOE_LLAVA_TINY="1", DS_ACCELERATOR="cpu",
                          MASTER_PORT=str(_free_port()), **env_overrides))
    start = time.perf_counter()
    _run_logged(["bash", os.path.join(launch_dir(), name), *extra], env, log_path, name)
    return time.perf_counter() - start


def input_digests(*paths: str) -> dict[str, str]:
    """{file: sha256} of the given files and of the files directly in the given folders: what a
    stage trains from (the LLM, the tower, the data), by content, not by name (the chain rewrites
    them in place: a rerun whose LM was retrained must not reuse stages trained on the old one)."""
    from clipmoe_encoder.dmu.runfolder import sha256_file

    files = []
    for path in paths:
        files += sorted(os.path.join(path, f) for f in os.listdir(path)) if os.path.isdir(path) else [path]
    return {f: sha256_file(f) for f in files if os.path.isfile(f)}


def _stage(name: str, out_dir: str, env_overrides: dict, extra: list[str], log_path: str,
           plan: LlavaPlan, on_start=None, inputs: dict | None = None) -> tuple[float, bool]:
    """Run one training script unless an earlier run of the chain finished it with the same
    settings and inputs (input_digests; the marker is written only after the script exited 0, so a
    killed stage is redone from its start, and a stage of another mode, plan or input is redone).
    out_dir is the chain's own stage folder. Returns (seconds, reused)."""
    marker = os.path.join(out_dir, DONE_MARKER)
    settings = {"script": name, "env": env_overrides, "args": extra, "plan": asdict(plan), "inputs": inputs or {}}
    if os.path.isfile(marker):
        with open(marker) as f:
            done = json.load(f)
        if done.get("settings") == settings:
            return done["seconds"], True
    # Redone from its start in an empty folder: what a killed or other-settings run left there is
    # the chain's own (and the training refuses a non-empty folder that is not a run of its own,
    # e.g. one an older chain version wrote).
    shutil.rmtree(out_dir, ignore_errors=True)
    if on_start:
        on_start(log_path)
    seconds = _script(name, env_overrides, extra, log_path)
    tmp = marker + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"seconds": seconds, "settings": settings}, f)
    os.replace(tmp, marker)
    return seconds, False


# Trainer flags the chain adds to the scripts' own. On one CPU rank gradient checkpointing (the
# scripts' published setting, for GPU memory) only recomputes the LLM's forward, and ZeRO-3
# (finetune.sh's) only partitions parameters over that one rank and gathers them back around every
# module: stage 2 runs under pretrain.sh's ZeRO-2 config instead, which keeps the whole model on the
# rank as well. 80 stage-2 steps of a full chain: 18.7 s against 26.1 with the scripts' flags, the
# same last loss (scripts/demo_probes/llava_stage_speed.py, README there); ZeRO-3 stays tested on
# its own (tests/llava).
ONE_RANK_FLAGS = ["--gradient_checkpointing", "False"]


def stage_flags(stage: str) -> list[str]:
    """The chain's flags for "stage1" or "stage2" (ONE_RANK_FLAGS)."""
    if stage == "stage1":
        return ONE_RANK_FLAGS
    return ONE_RANK_FLAGS + ["--deepspeed", os.path.join(launch_dir(), "zero2.json")]


STAGE_SCRIPTS = {"stage1": "pretrain.sh", "stage2": "finetune.sh"}


def stage_launch(stage: str, plan: LlavaPlan, tower: str, llm_dir: str, data_path: str, image_folder: str,
                 run_dir: str, output_dir: str, steps: int, stage1_dir: str | None = None,
                 flags: list[str] | None = None) -> tuple[str, dict, list[str]]:
    """(script, environment overrides, trainer arguments) of one stage in the scripts' tiny mode,
    as the chain runs it: run_dir is the tiny root, stage1_dir the projector stage 2 starts from.
    flags: the trainer flags after the plan's learning rate and seed (default: stage_flags)."""
    env = {"TINY_ROOT": run_dir, "TINY_MODEL": llm_dir, "TINY_IMAGE_FOLDER": image_folder, "TINY_BATCH": str(plan.batch),
           "VISION_TOWER": tower, "TINY_DATA_PATH": data_path, "TINY_OUTPUT_DIR": output_dir, "TINY_STEPS": str(steps)}
    if stage == "stage2":
        env["PRETRAIN_DIR_TINY"] = stage1_dir
    lr = plan.stage1_lr if stage == "stage1" else plan.stage2_lr
    args = ["--learning_rate", str(lr), "--seed", str(plan.seed), *(stage_flags(stage) if flags is None else flags)]
    return STAGE_SCRIPTS[stage], env, args


def train_run(name: str, tower: str, llm_dir: str, data_paths: dict, image_folder: str, run_dir: str,
              plan: LlavaPlan, current: dict | None = None) -> dict:
    """Stage 1 (projector) then stage 2 (projector + LLM), tower frozen in both, both under ZeRO-2
    and without gradient checkpointing (stage_flags).
    current: {run: (stage, reader of its log)} of the stage being trained, for the console's
    progress lines (progress.ProgressFollower)."""
    from .progress import trainer_log_state

    current = {} if current is None else current

    def following(stage):
        return lambda log_path: current.__setitem__(f"llava-{name}", (stage, partial(trainer_log_state, log_path)))

    os.makedirs(run_dir, exist_ok=True)
    stage1 = os.path.join(run_dir, "stage1")
    stage2 = os.path.join(run_dir, "llava-stage2")  # LLaVA's loader wants "llava" in the name
    inputs = input_digests(llm_dir, tower.removeprefix("clipmoe:"), data_paths["pretrain"], data_paths["finetune"])
    steps1 = plan.steps(_n_records(data_paths["pretrain"]), plan.stage1_epochs)
    steps2 = plan.steps(_n_records(data_paths["finetune"]), plan.stage2_epochs)
    seconds, reused = {}, {}
    script, env, args = stage_launch("stage1", plan, tower, llm_dir, data_paths["pretrain"], image_folder, run_dir,
                                     stage1, steps1)
    seconds["stage1"], reused["stage1"] = _stage(script, stage1, env, args, os.path.join(run_dir, "stage1.log"), plan,
                                                 following("stage 1"), inputs)
    if not reused["stage1"]:  # a new projector: stage 2 must start from it
        shutil.rmtree(stage2, ignore_errors=True)
    script, env, args = stage_launch("stage2", plan, tower, llm_dir, data_paths["finetune"], image_folder, run_dir,
                                     stage2, steps2, stage1_dir=stage1)
    seconds["stage2"], reused["stage2"] = _stage(script, stage2, env, args, os.path.join(run_dir, "stage2.log"), plan,
                                                 following("stage 2"), inputs)
    current.pop(f"llava-{name}", None)
    return {"name": name, "tower": tower, "stage1": stage1, "stage2": stage2, "steps": {"stage1": steps1, "stage2": steps2},
            "flags": {stage: stage_flags(stage) for stage in ("stage1", "stage2")}, "seconds": seconds, "reused": reused}


def eval_files(benchmarks: dict) -> dict:
    """The chain's benchmark files, named as eval_mllm.benchmarks names them (its layout is not
    a --data-root: one image folder, the world's, for all three)."""
    images = benchmarks["image_folder"]
    return {"pope": {"question_file": benchmarks["pope"]["question_file"], "image_folder": images,
                     "annotation_dir": benchmarks["pope"]["annotation_dir"]},
            "gqa": {"question_file": benchmarks["gqa"]["question_file"], "image_folder": images,
                    "annotation_file": benchmarks["gqa"]["annotation_file"]},
            "mmbench": {"question_file": benchmarks["mmbench"]["question_file"]}}


def eval_arguments(model_dir: str, benchmarks: dict, eval_dir: str, plan: LlavaPlan) -> dict:
    """Keywords of `eval_mllm.run` for one checkpoint (MMBench-style: one pass, round 0)."""
    return {"model": model_dir, "benchmarks": list(BENCHMARKS), "out": eval_dir, "files": eval_files(benchmarks),
            "max_new_tokens": plan.max_new_tokens, "batch_size": plan.eval_batch, "device": "cpu",
            "progress": False}


def answers_files(answers_dir: str) -> dict[str, str]:
    """{benchmark: answers JSONL} of one run's eval_mllm output folder."""
    from eval_mllm.benchmarks import REGISTRY

    return {name: os.path.join(answers_dir, REGISTRY[name].answers_file) for name in BENCHMARKS}


def eval_call(arguments: dict) -> str:
    """The `eval_mllm.run` call as a user writes it (for the report)."""
    return "eval_mllm.run(" + ", ".join(f"{k}={v!r}" for k, v in arguments.items()) + ")"


def answer_and_score(model_dir: str, benchmarks: dict, eval_dir: str, plan: LlavaPlan, fresh: bool) -> dict:
    """One checkpoint's answers to the three benchmarks and their scores, in this process
    (eval_mllm.run). It resumes an answers file, so answers of an earlier checkpoint are removed
    first (fresh: stage 2 was trained in this run). Returns {benchmark: metrics}."""
    import eval_mllm

    if fresh:
        shutil.rmtree(eval_dir, ignore_errors=True)
    summary = eval_mllm.run(**eval_arguments(model_dir, benchmarks, eval_dir, plan))
    return {name: summary["benchmarks"][name]["metrics"] for name in BENCHMARKS}


def _answer_in_child(model_dir: str, benchmarks: dict, eval_dir: str, plan: LlavaPlan, fresh: bool) -> tuple[dict, float]:
    """answer_and_score in a worker process of its own, on one thread; returns (scores, seconds)."""
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    return answer_and_score(model_dir, benchmarks, eval_dir, plan, fresh), time.perf_counter() - start


def run_both(towers: dict, llm_dir: str, data_paths: dict, benchmarks: dict, out_dir: str, plan: LlavaPlan,
             log=print, progress_every: float = 30.0) -> dict:
    """Both runs trained side by side, then both checkpoints answer and are scored side by side:
    each run in a process of its own with one thread (the training in DeepSpeed children, the
    answers in a spawned worker), one core each of the two this is sized for. On a busy machine
    one process per core is also the safe choice: the chain's LLM (hidden 128, batch 16) at load 8-11
    took 1.7-2.9 s a training step with one torch thread and 13-14 s with two (OpenMP threads waiting on each
    other). A progress line per run every `progress_every` seconds, read from its stage log or
    its answers files."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    from ..interrupt import die_with_parent
    from .progress import AnswerCounter, ProgressFollower, whole_lines

    log = whole_lines(log)  # the two runs' threads and the progress follower print side by side
    current: dict = {}

    def train(name):
        log(f"[chain] llava-{name}: training ({towers[name]})")
        result = train_run(name, towers[name], llm_dir, data_paths, benchmarks["image_folder"],
                           os.path.join(out_dir, name), plan, current)
        done = "reused from an earlier run" if result["reused"]["stage2"] else "trained"
        log(f"[chain] llava-{name}: {done} ({sum(result['seconds'].values()):.1f} s)")
        return result

    with ThreadPoolExecutor(max_workers=len(RUNS)) as pool, ProgressFollower(current, log, progress_every):
        futures = {name: pool.submit(train, name) for name in RUNS}
        results = {name: f.result() for name, f in futures.items()}
    n_questions = sum(benchmarks[b]["n"] for b in BENCHMARKS)
    futures = {}
    with ProcessPoolExecutor(max_workers=len(RUNS), mp_context=multiprocessing.get_context("spawn"),
                             initializer=die_with_parent, initargs=(os.getpid(),)) as pool, \
            ProgressFollower(current, log, progress_every):
        for name, result in results.items():
            log(f"[chain] llava-{name}: answering and scoring")
            eval_dir = os.path.join(out_dir, name, "eval")
            fresh = not result["reused"]["stage2"]
            if fresh:  # answers of an earlier checkpoint would be resumed, and counted below
                shutil.rmtree(eval_dir, ignore_errors=True)
            result["answers_dir"] = os.path.join(eval_dir, "answers")
            current[f"llava-{name}"] = ("answering", AnswerCounter(list(answers_files(result["answers_dir"]).values()),
                                                                   n_questions))
            futures[name] = pool.submit(_answer_in_child, result["stage2"], benchmarks, eval_dir, plan, False)
        for name, future in futures.items():
            results[name]["scores"], results[name]["seconds"]["answers + scores"] = future.result()
            current.pop(f"llava-{name}", None)
            results[name]["eval_call"] = eval_call(eval_arguments(results[name]["stage2"], benchmarks,
                                                                  os.path.join(out_dir, name, "eval"), plan))
    return results


def plan_dict(plan: LlavaPlan) -> dict:
    return asdict(plan)
