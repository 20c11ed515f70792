"""Zero-shot CLIP evaluation (retrieval recall@K, classification top-K) for transformers CLIP,
open_clip and CLIP-MoE models; `clipmoe eval` is the command-line front end (cli.py)."""

from .datasets import (
    load_image,
    read_cifar,
    read_class_folder,
    read_coco_captions,
    read_flickr_token,
    read_image_text_json,
    read_karpathy,
)
from .encoders import HFCLIPEncoder, OpenCLIPEncoder, ZeroShotEncoder, load_encoder
from .metrics import (
    classification_accuracy,
    evaluate_classification,
    evaluate_retrieval,
    retrieval_recall,
    zero_shot_classifier,
)
from .templates import OPENAI_IMAGENET_TEMPLATES, resolve_templates

__all__ = [
    "OPENAI_IMAGENET_TEMPLATES",
    "HFCLIPEncoder",
    "OpenCLIPEncoder",
    "ZeroShotEncoder",
    "classification_accuracy",
    "evaluate_classification",
    "evaluate_retrieval",
    "load_encoder",
    "load_image",
    "read_cifar",
    "read_class_folder",
    "read_coco_captions",
    "read_flickr_token",
    "read_image_text_json",
    "read_karpathy",
    "resolve_templates",
    "retrieval_recall",
    "zero_shot_classifier",
]
