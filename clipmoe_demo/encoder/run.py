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
MODELS = ("base", "direct-ft", "upcycling", "clip-moe")


@dataclass
class DemoPlan:
    """Every size and schedule of one demo run (written into the report and stages.json)."""

    mode: str
    world: W.WorldSettings
    base: BaseSize
    base_train: dict  # train_contrastive keyword arguments for the dense base
    dmu: dict  # overrides of DMUSettings (shared by DMU and both baselines)
    routing_samples: int = 200
    # One compute thread: these models are too small for intra-op parallelism to pay, and with a
    # second busy process on 2 cores two OpenMP threads ran a step 6x slower (measured); the
    # second core goes to a data-loading worker in full mode instead.
    threads: int = 1
    seed: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["world"]["group_weights"] = list(self.world.group_weights)
        return d


def make_plan(quick: bool) -> DemoPlan:
    # The base is trained from scratch, so it learns its own temperature (logit_scale=None); the
    # later stages keep using (and training) it rather than jumping to the paper's frozen 100.
    if quick:
        return DemoPlan(
            mode="quick",
            world=W.WorldSettings(image_size=QUICK.image_size, n_train=512, n_test=100),
            base=QUICK,
            base_train={"epochs": 8, "batch_size": 32, "lr": 1e-3, "warmup_steps": 10, "logit_scale": None},
            dmu={"num_experts": 4, "top_k": 2, "clusters_per_modality": 2, "mcl_epochs": 1, "router_epochs": 1, "batch_size": 32,
                 "lr_mcl": 2e-4, "warmup_steps": 2, "logit_scale": None},  # None: the base's, frozen (see run_demo)
            routing_samples=100,
        )
    return DemoPlan(
        mode="full",
        world=W.WorldSettings(image_size=FULL.image_size, n_train=3500, n_test=500),
        base=FULL,
        base_train={"epochs": 8, "batch_size": 64, "lr": 1e-3, "warmup_steps": 50, "logit_scale": None, "num_workers": 1},
        dmu={"num_experts": 4, "top_k": 2, "clusters_per_modality": 3, "mcl_epochs": 1, "router_epochs": 1, "batch_size": 64,
             "lr_mcl": 1e-4, "warmup_steps": 10, "logit_scale": None, "num_workers": 1},
        routing_samples=500,
    )


# ---------------------------------------------------------------------------------------------
# stage bookkeeping

class Stages:
    """DIR/stages.json: the plan the directory was made with and, per finished stage, its output and
    the seconds it took. A directory made with another plan is refused, not silently mixed."""

    def __init__(self, out_dir: str, plan: DemoPlan, log=print):
        self.path = os.path.join(out_dir, STAGES_FILE)
        self.log = log
        plan_dict = json.loads(json.dumps(plan.to_dict()))  # tuples -> lists, as read back from disk
        if os.path.isfile(self.path):
            with open(self.path) as f:
                self.state = json.load(f)
            if self.state.get("plan") != plan_dict:
                raise CLIPMoEError(
                    f"{self.path}: this directory holds a demo run with other settings (mode "
                    f"{self.state.get('plan', {}).get('mode')!r}); use another --out directory"
                )
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
        done = self.state["stages"].get(name)
        if done is not None and (not isinstance(done["result"], str) or os.path.exists(done["result"])):
            self.log(f"[demo] {name}: done before ({done['seconds']:.1f} s), reused")
            return done["result"]
        self.log(f"[demo] {name}: running")
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
        self.state["stages"][name] = {"result": result, "seconds": seconds}
        self._save()
        self.ran_now.append(name)
        self.log(f"[demo] {name}: {seconds:.1f} s")
        return result

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
    from clipmoe_encoder.zeroshot import evaluate_classification, evaluate_retrieval, load_encoder

    encoder = _EncodedOnce(load_encoder(model_dir), eval_set["images"])
    metrics = dict(evaluate_retrieval(encoder, eval_set["images"], eval_set["captions"]))
    for task, spec in eval_set["tasks"].items():
        res = evaluate_classification(encoder, spec["images"], spec["labels"], spec["classnames"], spec["templates"])
        for key, value in res.items():
            metrics[f"{task}_{key}"] = value
    return metrics


# ---------------------------------------------------------------------------------------------
# the chain

def run_demo(out_dir: str, quick: bool = False, log=print) -> dict:
    import torch

    plan = make_plan(quick)
    torch.set_num_threads(plan.threads)  # the demo is sized for 2 cores; more threads only contend
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out_dir = os.path.abspath(out_dir)
    # Timings mean little without the load they were measured under (other jobs on the cores).
    machine = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "load_average_1min_at_start": round(os.getloadavg()[0], 2)}
    stages = Stages(out_dir, plan, log)
    world_dir = os.path.join(out_dir, "world")
    train_path = os.path.join(world_dir, "train.jsonl")
    test_path = os.path.join(world_dir, "test.jsonl")

    stages.run("world", lambda: (W.write_world(world_dir, plan.world), world_dir)[1])
    base_init = stages.run("base-init", lambda: write_base_init(os.path.join(out_dir, "base_init"), plan.base, W.vocabulary(), plan.seed))
    base_dir = stages.run("base", lambda: _train_base(base_init, train_path, os.path.join(out_dir, "base"), plan))

    from clipmoe_encoder.dmu.pipeline import DMUSettings, routing_statistics, run_baseline, run_dmu

    settings = dataclasses.replace(DMUSettings(), **_dmu_overrides(plan, base_dir))
    models = {"base": base_dir}
    for kind in ("direct-ft", "upcycling"):  # each writes DIR/<kind>/
        models[kind] = stages.run(kind, lambda kind=kind: os.fspath(
            run_baseline(kind, base_dir, train_path, out_dir, settings, image_root=world_dir)))
    models["clip-moe"] = stages.run("dmu", lambda: os.fspath(
        run_dmu(base_dir, train_path, os.path.join(out_dir, "dmu"), settings, image_root=world_dir)))

    eval_set = evaluation_set(world_dir)
    results = {}
    for name in MODELS:
        results[name] = stages.run(f"eval-{name}", lambda name=name: evaluate_model(models[name], eval_set))
    routing = {}
    for name in ("upcycling", "clip-moe"):
        routing[name] = stages.run(f"routing-{name}", lambda name=name: routing_statistics(
            models[name], test_path, image_root=world_dir, max_samples=plan.routing_samples))

    n_classes = {task: len(spec["classnames"]) for task, spec in eval_set["tasks"].items()}
    chance = chance_levels(len(eval_set["images"]), len(eval_set["images"]), n_classes)
    from .report import write_report

    summary = {"plan": plan.to_dict(), "dmu_settings": dataclasses.asdict(settings), "machine": machine, "models": models,
               "results": results, "chance": chance, "routing": routing, "timings": stages.timings(),
               "eval_counts": {"retrieval_images": len(eval_set["images"]),
                               **{f"{t}_images": len(s["images"]) for t, s in eval_set["tasks"].items()}}}
    write_report(out_dir, summary)
    log(f"[demo] report: {os.path.join(out_dir, 'report.md')}")
    return summary


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


def _train_base(init_dir, train_path, out_dir, plan: DemoPlan) -> str:
    from clipmoe_encoder.dmu.trainer import train_contrastive

    # stage_name "base" under DIR: the model lands in DIR/base/model, its log in DIR/base/log.jsonl
    return os.fspath(train_contrastive(init_dir, train_path, os.path.dirname(out_dir), trainable="all",
                                       stage_name=os.path.basename(out_dir), seed=plan.seed, **plan.base_train))
