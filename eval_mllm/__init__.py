"""MLLM benchmark evaluation for CLIP-MoE.

    import eval_mllm
    summary = eval_mllm.run(model="ckpt/llava-clipmoe", benchmarks=["pope", "mmbench"],
                            data_root="data/eval", out="results/")
    metrics = eval_mllm.score("pope", annotation_dir=..., question_file=..., result_file=...)

`run` and `score` are imported on first use (PEP 562), so `import eval_mllm` and building the
command line's parser stay free of torch and transformers.
"""

_API = {"run": ("eval_mllm.runner", "run"), "score": ("eval_mllm.score_cli", "score")}


def __getattr__(name):
    if name in _API:
        import importlib

        module, attr = _API[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])


__all__ = ["run", "score"]
