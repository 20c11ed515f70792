"""Zero-shot CLIP evaluation (retrieval recall@K, classification top-K) for transformers CLIP,
open_clip and CLIP-MoE models; `clipmoe eval` is the command-line front end (cli.py).

Names are imported on first use (PEP 562) so that building the `clipmoe` parser imports no torch.
"""

import importlib

_EXPORTS = {
    **dict.fromkeys(("load_image", "read_cifar", "read_class_folder", "read_coco_captions", "read_flickr_token",
                     "read_image_text_json", "read_karpathy"), "datasets"),
    **dict.fromkeys(("HFCLIPEncoder", "OpenCLIPEncoder", "ZeroShotEncoder", "load_encoder"), "encoders"),
    **dict.fromkeys(("classification_accuracy", "evaluate_classification", "evaluate_retrieval", "retrieval_recall",
                     "zero_shot_classifier"), "metrics"),
    **dict.fromkeys(("MMVPPair", "evaluate_mmvp", "mmvp_pair_hits", "mmvp_scores", "read_mmvp"), "mmvp"),
    **dict.fromkeys(("OPENAI_IMAGENET_TEMPLATES", "resolve_templates"), "templates"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
