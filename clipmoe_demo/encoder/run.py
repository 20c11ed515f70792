"""The demo's chain: world -> dense base CLIP trained from scratch -> direct fine-tune, sparse
upcycling and DMU (CLIP-MoE) -> zero-shot evaluation of the four models -> report.

Every stage is timed and recorded in DIR/stages.json once it has finished; a rerun skips the
stages recorded there (their outputs still on disk) and resumes the first unfinished one. The
building blocks (trainer, DMU, baselines, routing statistics, zero-shot metrics) are the
project's own; this module only decides the sizes and the order.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import asdict, dataclass

from clipmoe_encoder.errors import CLIPMoEError
from .. import world as W
from .base import FULL, QUICK, BaseSize, write_base_init

STAGES_FILE = "stages.json"
LAST_HALF = "clip-moe-last-half"
MODELS = ("base", "direct-ft", "upcycling", "clip-moe", LAST_HALF)
COST_BATCH = 64  # held-out images per timed forward


@dataclass
class DemoPlan:
    """Every size and schedule of one demo run (written into the report and stages.json)."""

    mode: str
    world: W.WorldSettings
    base: BaseSize
    base_train: dict  # train_contrastive keyword arguments for the dense base
    dmu: dict  # overrides of DMUSettings (shared by DMU and both baselines)
    routing_samples: int = 200
    # One compute thread per process: these models are too small for intra-op parallelism to pay,
    # and with a second busy process on 2 cores two OpenMP threads ran a step 6x slower (measured).
    # The cores go to `workers` processes training independent seeds / methods side by side.
    threads: int = 1
    workers: int = 2
    seeds: tuple = (0, 1, 2)  # training seeds (the world stays fixed): every model is trained once per seed

    def to_dict(self) -> dict:
        d = asdict(self)
        d["world"]["group_weights"] = list(self.world.group_weights)
        d["seeds"] = list(self.seeds)
        return d


def make_plan(quick: bool) -> DemoPlan:
    # cache_samples: the world's images are decoded and preprocessed once per job, not once per
    # epoch and stage (all 3,500 full-mode images take about 100 MB as pixels); the same items.
    # The base is trained from scratch, so it learns its own temperature (logit_scale=None); the
    # later stages keep using (and training) it rather than jumping to the paper's frozen 100.
    if quick:
        return DemoPlan(
            mode="quick",
            world=W.WorldSettings(image_size=QUICK.image_size, n_train=512, n_test=100),
            base=QUICK,
            base_train={"epochs": 8, "batch_size": 32, "lr": 1e-3, "warmup_steps": 10, "logit_scale": None, "cache_samples": True},
            dmu={"num_experts": 4, "top_k": 2, "clusters_per_modality": 2, "mcl_epochs": 1, "router_epochs": 1, "batch_size": 32,
                 "lr_mcl": 2e-4, "warmup_steps": 2, "logit_scale": None,  # None: the base's, frozen (see run_demo)
                 "cache_samples": True},
            routing_samples=100,
        )
    return DemoPlan(
        mode="full",
        world=W.WorldSettings(image_size=FULL.image_size, n_train=3500, n_test=500),
        base=FULL,
        base_train={"epochs": 8, "batch_size": 64, "lr": 1e-3, "warmup_steps": 50, "logit_scale": None, "cache_samples": True},
        dmu={"num_experts": 4, "top_k": 2, "clusters_per_modality": 3, "mcl_epochs": 1, "router_epochs": 1, "batch_size": 64,
             "lr_mcl": 1e-4, "warmup_steps": 10, "logit_scale": None, "cache_samples": True},
        routing_samples=500,
    )


# ---------------------------------------------------------------------------------------------
# stage bookkeeping

def say(message: str) -> None:
    """A progress line, flushed: piped to a file or a pager it shows up as it happens."""
    print(message, flush=True)


# Which seeds run and in how many processes change no stage's result (each seed's stages are its
# own, named seed<s>/...): a rerun may add or drop seeds, or use other workers, and reuse the rest.
RESULT_NEUTRAL_PLAN = {"seeds", "workers"}


def _results_affecting(plan_dict):
    return {k: v for k, v in (plan_dict or {}).items() if k not in RESULT_NEUTRAL_PLAN}


class Stages:
    """DIR/stages.json: the plan the directory was made with and, per finished stage, its output and
    the seconds it took. A directory made with another plan is refused, not silently mixed."""

    def __init__(self, out_dir: str, plan: DemoPlan, log=None):
        self.path = os.path.join(out_dir, STAGES_FILE)
        self.log = log or say
        plan_dict = json.loads(json.dumps(plan.to_dict()))  # tuples -> lists, as read back from disk
        if os.path.isfile(self.path):
            with open(self.path) as f:
                self.state = json.load(f)
            if _results_affecting(self.state.get("plan")) != _results_affecting(plan_dict):
                raise CLIPMoEError(
                    f"{self.path}: this directory holds a demo run with other settings (mode "
                    f"{self.state.get('plan', {}).get('mode')!r}); use another --out directory"
                )
            self.state["plan"] = plan_dict  # the seeds and workers of this run
        else:
            os.makedirs(out_dir, exist_ok=True)
            self.state = {"plan": plan_dict, "stages": {}}
        self._save()
        self.ran_now: list[str] = []

    def _save(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.state, f, indent=1)
        os.replace(tmp, self.path)

    def run(self, name: str, fn):
        """fn() -> a JSON-able result (typically an output path). Skipped when already recorded and
        its output path (if it is one) still exists."""
        done, result = self.finished(name)
        if done:
            self.say_reused(name)
            return result
        self.log(f"[demo] {name}: running")
        start = time.perf_counter()
        result = fn()
        self.record(name, result, time.perf_counter() - start)
        return result

    def finished(self, name: str):
        """(True, result) when the stage is recorded and its output path (if it is one) still exists."""
        done = self.state["stages"].get(name)
        if done is not None and (not isinstance(done["result"], str) or os.path.exists(done["result"])):
            return True, done["result"]
        return False, None

    def say_reused(self, name: str) -> None:
        self.log(f"[demo] {name}: done before ({self.state['stages'][name]['seconds']:.1f} s), reused")

    def record(self, name: str, result, seconds: float):
        self.state["stages"][name] = {"result": result, "seconds": seconds}
        self._save()
        self.ran_now.append(name)
        self.log(f"[demo] {name}: {seconds:.1f} s")

    def timings(self) -> dict[str, float]:
        return {name: s["seconds"] for name, s in self.state["stages"].items()}


# ---------------------------------------------------------------------------------------------
# evaluation

def chance_levels(n_images: int, n_texts: int, n_classes: dict[str, int]) -> dict:
    """What a random ranking scores (percent): R@K = K/N (one caption per image), top-K = K/C."""
    out = {}
    for k in (1, 5, 10):
        out[f"i2t_r{k}"] = 100.0 * min(k, n_texts) / n_texts
        out[f"t2i_r{k}"] = 100.0 * min(k, n_images) / n_images
    for task, c in n_classes.items():
        for k in (1, 5):
            out[f"{task}_top{k}"] = 100.0 * min(k, c) / c
    return out


def evaluation_set(world_dir: str) -> dict:
    """The held-out split as the zero-shot evaluations take it."""
    scenes = W.read_scenes(world_dir, "test")
    images = [os.path.join(world_dir, s["image"]) for s in scenes]
    tasks = {}
    for task, spec in W.classification_tasks().items():
        labelled = [(img, W.task_label(s, spec["attribute"], spec["classnames"])) for img, s in zip(images, scenes)]
        labelled = [(img, y) for img, y in labelled if y is not None]
        tasks[task] = dict(spec, images=[i for i, _ in labelled], labels=[y for _, y in labelled])
    return {"images": images, "captions": [[s["caption"]] for s in scenes], "tasks": tasks}


class _EncodedOnce:
    """An encoder with the held-out images encoded up front: every classification task scores a
    subset of the retrieval images, so each image is encoded once per model instead of up to three
    times. Texts go to the wrapped encoder."""

    def __init__(self, encoder, images):
        self.encoder, self.device = encoder, encoder.device
        self.row = {image: i for i, image in enumerate(images)}
        self.image_emb = encoder.encode_images(images)  # evaluate_retrieval's batch size, so the same embeddings

    def encode_images(self, images, **_):
        return self.image_emb[[self.row[image] for image in images]]

    def encode_texts(self, texts, **kwargs):
        return self.encoder.encode_texts(texts, **kwargs)


def evaluate_model(model_dir: str, eval_set: dict) -> dict:
    """Held-out retrieval (R@1/5/10 both ways) and top-1/5 classification of every task."""
    from clipmoe_encoder.zeroshot import evaluate_retrieval, load_encoder
    from clipmoe_encoder.zeroshot.metrics import classification_accuracy, prompt_classifier

    encoder = _EncodedOnce(load_encoder(model_dir), eval_set["images"])
    metrics = dict(evaluate_retrieval(encoder, eval_set["images"], eval_set["captions"]))
    for task, spec in eval_set["tasks"].items():
        res = classification_accuracy(encoder.encode_images(spec["images"]), spec["labels"],
                                      prompt_classifier(encoder, spec["prompts"]), ks=(1, 5) if len(spec["prompts"]) > 5 else (1,))
        res.update(num_images=len(spec["images"]), num_classes=len(spec["prompts"]))
        for key, value in res.items():
            metrics[f"{task}_{key}"] = value
    return metrics


# ---------------------------------------------------------------------------------------------
# the chain

def _world_stage(stages: Stages, plan: DemoPlan, out_dir: str) -> str:
    world_dir = os.path.join(out_dir, "world")
    return stages.run("world", lambda: (W.write_world(world_dir, plan.world), world_dir)[1])


def write_world_first(out_dir: str, quick: bool = False, log=None) -> str:
    """The demo's first stage alone: its world written and recorded in DIR/stages.json (a later
    run_demo reuses it), for a caller that needs the world before the demo runs (the chain's
    language model). A folder holding a demo run of other settings is refused before anything is
    written into it. Returns the world's directory."""
    out_dir = os.path.abspath(out_dir)
    plan = make_plan(quick)
    return _world_stage(Stages(out_dir, plan, log), plan, out_dir)


def run_demo(out_dir: str, quick: bool = False, log=None, seeds=None, workers=None, nice: int = 0) -> dict:
    """seeds / workers: the training seeds and worker processes instead of the plan's. nice: added
    to the worker processes' niceness (the chain's LM thread keeps its core beside them); like the
    workers' number, it changes when a stage finishes, never what it computes."""
    import torch

    log = log or say
    plan = make_plan(quick)
    if seeds is not None:
        plan = dataclasses.replace(plan, seeds=tuple(seeds))
    if workers is not None:
        plan = dataclasses.replace(plan, workers=workers)
    torch.set_num_threads(plan.threads)  # the demo is sized for 2 cores; more threads only contend
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out_dir = os.path.abspath(out_dir)
    # Timings mean little without the load they were measured under (other jobs on the cores).
    machine = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "workers": plan.workers,
               "load_average_1min_at_start": round(os.getloadavg()[0], 2)}
    started = time.perf_counter()
    stages = Stages(out_dir, plan, log)
    world_dir = os.path.join(out_dir, "world")
    test_path = os.path.join(world_dir, "test.jsonl")

    _world_stage(stages, plan, out_dir)
    eval_set = evaluation_set(world_dir)
    results_by_seed, checkpoints = run_jobs(stages, training_jobs(plan), plan, out_dir, nice)
    seed0 = f"seed{plan.seeds[0]}"
    models = checkpoints[seed0]  # the checkpoints the mechanism, cost and LLaVA chain use

    from clipmoe_encoder.dmu.pipeline import routing_statistics

    settings = _dmu_settings(plan, models["base"], plan.seeds[0])
    routing = {}
    for name in ("upcycling", "clip-moe"):
        routing[name] = stages.run(f"{seed0}/routing-{name}", lambda name=name: routing_statistics(
            models[name], test_path, image_root=world_dir, max_samples=plan.routing_samples))
    dmu_dir = os.path.join(out_dir, seed0, "dmu")
    mechanism = dict(_mechanism(stages, plan, settings, models["clip-moe"], dmu_dir, world_dir, os.path.join(out_dir, seed0), eval_set),
                     seed=seed0)
    cost = stages.run(f"{seed0}/cost", lambda: _cost(models, eval_set))

    n_classes = {task: len(spec["classnames"]) for task, spec in eval_set["tasks"].items()}
    chance = chance_levels(len(eval_set["images"]), len(eval_set["images"]), n_classes)
    from .report import write_report
    from .seeds import aggregate

    machine.update(wall_seconds_this_run=time.perf_counter() - started, load_average_1min_at_end=round(os.getloadavg()[0], 2),
                   stages_run_now=len(stages.ran_now))
    mean, std = aggregate(results_by_seed)
    summary = {"plan": plan.to_dict(), "dmu_settings": dataclasses.asdict(settings), "machine": machine, "models": models,
               "results": mean, "results_std": std, "results_by_seed": results_by_seed, "checkpoints_by_seed": checkpoints,
               "comparisons": comparisons(results_by_seed), "chance": chance, "routing": routing,
               "mechanism": mechanism, "cost": cost, "timings": stages.timings(),
               "eval_counts": {"retrieval_images": len(eval_set["images"]),
                               **{f"{t}_images": len(s["images"]) for t, s in eval_set["tasks"].items()}}}
    write_report(out_dir, summary)
    log(f"[demo] report: {os.path.join(out_dir, 'report.md')}")
    return summary


# ---------------------------------------------------------------------------------------------
# training and evaluating every model of every seed, in worker processes

TRAINED_BY = {"base": "base", "direct-ft": "direct-ft", "upcycling": "upcycling", "clip-moe": "dmu", LAST_HALF: LAST_HALF}


def checkpoint_path(out_dir: str, seed: int, model: str) -> str:
    """Where each model of a seed lands (DIR/seed<s>/...): the trainers' own layouts."""
    seed_dir = os.path.join(out_dir, f"seed{seed}")
    return {"base": os.path.join(seed_dir, "base", "model"), "direct-ft": os.path.join(seed_dir, "direct-ft", "model"),
            "upcycling": os.path.join(seed_dir, "upcycling", "model"), "clip-moe": os.path.join(seed_dir, "dmu", "final"),
            LAST_HALF: os.path.join(seed_dir, LAST_HALF, "final")}[model]


def training_jobs(plan: DemoPlan) -> dict[str, tuple[str, int, list[str]]]:
    """{stage name: (kind, seed, stages it needs)} for every seed: the base, the three recipes from
    it, the cheaper CLIP-MoE from DMU's stages, and the zero-shot evaluation of each model. The
    workers take ready jobs in this order: seed by seed (a seed's scores are complete early, and
    an interrupted run has whole seeds), the longest chain (DMU) first, each evaluation right
    after its model."""
    needs = {"base-init": [], "base": ["base-init"], "eval-base": ["base"], "dmu": ["base"], "upcycling": ["base"],
             "direct-ft": ["base"], "eval-clip-moe": ["dmu"], LAST_HALF: ["dmu"], "eval-upcycling": ["upcycling"],
             "eval-direct-ft": ["direct-ft"], f"eval-{LAST_HALF}": [LAST_HALF]}
    return {f"seed{seed}/{kind}": (kind, seed, [f"seed{seed}/{n}" for n in needs[kind]]) for seed in plan.seeds for kind in needs}


def _init_worker(threads: int, parent_pid: int, nice: int = 0):
    import torch

    from ..interrupt import die_with_parent

    die_with_parent(parent_pid)
    torch.set_num_threads(threads)
    os.nice(nice)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _dmu_settings(plan: DemoPlan, base_dir: str, seed: int):
    from clipmoe_encoder.dmu.pipeline import DMUSettings

    return dataclasses.replace(DMUSettings(), **_dmu_overrides(plan, base_dir), seed=seed)


def run_job(kind: str, seed: int, plan: DemoPlan, out_dir: str):
    """One job of training_jobs (in a worker process): returns its JSON-able result and seconds."""
    start = time.perf_counter()
    world_dir = os.path.join(out_dir, "world")
    train_path = os.path.join(world_dir, "train.jsonl")
    seed_dir = os.path.join(out_dir, f"seed{seed}")
    base_dir = checkpoint_path(out_dir, seed, "base")
    if kind == "base-init":
        result = write_base_init(os.path.join(seed_dir, "base_init"), plan.base, W.vocabulary(), seed)
    elif kind == "base":
        result = _train_base(os.path.join(seed_dir, "base_init"), train_path, os.path.dirname(base_dir), plan, seed)
    elif kind.startswith("eval-"):
        result = evaluate_model(checkpoint_path(out_dir, seed, kind[len("eval-"):]), evaluation_set(world_dir))
    else:
        from clipmoe_encoder.dmu.pipeline import run_baseline, run_dmu, run_dmu_last_blocks

        settings = _dmu_settings(plan, base_dir, seed)
        if kind == "dmu":
            result = run_dmu(base_dir, train_path, os.path.join(seed_dir, "dmu"), settings, image_root=world_dir)
        elif kind == LAST_HALF:
            result = run_dmu_last_blocks(os.path.join(seed_dir, "dmu"), base_dir, train_path, os.path.join(seed_dir, LAST_HALF),
                                         last_half(plan.base.num_layers), settings, image_root=world_dir)
        else:  # direct-ft, upcycling: each writes DIR/seed<s>/<kind>/
            result = run_baseline(kind, base_dir, train_path, seed_dir, settings, image_root=world_dir)
        result = os.fspath(result)
    return result, time.perf_counter() - start


def run_jobs(stages: Stages, jobs: dict, plan: DemoPlan, out_dir: str, nice: int = 0) -> tuple[dict, dict]:
    """Runs every job not finished before, plan.workers at a time (a job once the jobs it needs are
    done), recording each in stages.json as it finishes; nice: added to the workers' niceness.
    Returns ({seed<s>: {model: metrics}}, {seed<s>: {model: checkpoint}})."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    workers = plan.workers
    done = {name for name in jobs if stages.finished(name)[0]}
    for name in (n for n in jobs if n in done):
        stages.say_reused(name)
    todo = [name for name in jobs if name not in done]
    if todo:
        # spawn, not fork: a forked child of a process that already ran torch can hang in OpenMP
        with ProcessPoolExecutor(max(1, workers), mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                                 initargs=(plan.threads, os.getpid(), nice)) as pool:
            running = {}
            while todo or running:
                for name in [n for n in todo if all(d in done for d in jobs[n][2])][:max(1, workers) - len(running)]:
                    kind, seed, _ = jobs[name]
                    stages.log(f"[demo] {name}: running")
                    running[pool.submit(run_job, kind, seed, plan, out_dir)] = name
                    todo.remove(name)
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    name = running.pop(future)
                    result, seconds = future.result()  # a job's error stops the demo here, with its message
                    stages.record(name, result, seconds)
                    done.add(name)
    results, checkpoints = {}, {}
    for seed in plan.seeds:
        key = f"seed{seed}"
        results[key] = {m: stages.finished(f"{key}/eval-{m}")[1] for m in MODELS}
        checkpoints[key] = {m: checkpoint_path(out_dir, seed, m) for m in MODELS}
    return results, checkpoints


COMPARED_METRICS = ("i2t_r1", "t2i_r1", "shape_top1", "colour_top1", "count_top1", "size_top1")


def comparisons(results_by_seed: dict) -> list[dict]:
    """CLIP-MoE against each other model, per headline metric, over the seeds (seeds.compare)."""
    from .seeds import compare

    return [compare(results_by_seed, "clip-moe", other, metric) for other in ("base", "direct-ft", "upcycling", LAST_HALF)
            for metric in COMPARED_METRICS]


def last_half(num_layers: int) -> int:
    """Blocks with experts in the cheaper CLIP-MoE: the last half, rounded down, at least one."""
    return max(1, num_layers // 2)


def _mechanism(stages, plan, settings, moe_dir, dmu_dir, world_dir, out_dir, eval_set) -> dict:
    """Cluster purity per MCL stage, routing by attribute, and each expert alone as a dense CLIP."""
    from . import mechanism as M

    seed = os.path.basename(out_dir)  # DIR/seed<s>: the stages are that seed's
    purity = stages.run(f"{seed}/cluster-purity", lambda: M.stage_cluster_purity(
        dmu_dir, W.read_scenes(world_dir, "train"), settings.clusters_per_modality))
    routing = stages.run(f"{seed}/routing-by-attribute", lambda: M.routing_by_attribute(moe_dir, world_dir, plan.routing_samples))
    experts = stages.run(f"{seed}/extract-experts", lambda: M.extract_experts(moe_dir, os.path.join(out_dir, "experts")))
    scores = {f"expert{j}": stages.run(f"{seed}/eval-expert{j}", lambda path=path: evaluate_model(path, eval_set))
              for j, path in enumerate(experts)}
    return {"cluster_purity": purity, "routing_by_attribute": routing, "experts": experts, "expert_results": scores}


def _cost(models: dict, eval_set: dict) -> dict:
    """FLOPs per image (from each config) and image-tower forward time relative to the base on
    the same held-out batch."""
    from PIL import Image

    from clipmoe_encoder.dmu.models import load_preprocessors

    from .cost import model_image_flops, relative_forward_times

    _, processor = load_preprocessors(models["base"])
    batch = [Image.open(p).convert("RGB") for p in eval_set["images"][:COST_BATCH]]
    pixels = processor(images=batch, return_tensors="pt")["pixel_values"]
    times = relative_forward_times(models, pixels)
    return {name: {"flops": model_image_flops(path), **times[name]} for name, path in models.items()}


def _dmu_overrides(plan: DemoPlan, base_dir: str) -> dict:
    """plan.dmu, with logit_scale None replaced by the base's learned temperature. DMU's experts
    must share every non-FFN weight, so the temperature cannot train during MCL: all three
    fine-tuning recipes use the base's, frozen (the paper freezes 100, what OpenAI's CLIP learned)."""
    if "logit_scale" in plan.dmu and plan.dmu["logit_scale"] is None:
        return dict(plan.dmu, logit_scale=learned_logit_scale(base_dir))
    return dict(plan.dmu)


def learned_logit_scale(model_dir: str, ceiling: float = 100.0) -> float:
    """exp(logit_scale) of a saved CLIP, capped where the trainer caps it while training."""
    import math

    from safetensors import safe_open

    with safe_open(os.path.join(model_dir, "model.safetensors"), framework="pt") as f:
        return min(ceiling, float(math.exp(float(f.get_tensor("logit_scale")))))


def _train_base(init_dir, train_path, out_dir, plan: DemoPlan, seed: int) -> str:
    from clipmoe_encoder.dmu.trainer import train_contrastive

    # stage_name "base" under DIR: the model lands in DIR/base/model, its log in DIR/base/log.jsonl
    return os.fspath(train_contrastive(init_dir, train_path, os.path.dirname(out_dir), trainable="all",
                                       stage_name=os.path.basename(out_dir), seed=seed, **plan.base_train))
