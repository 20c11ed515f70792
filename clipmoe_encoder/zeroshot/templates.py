"""Prompt templates for zero-shot classification.

`OPENAI_IMAGENET_TEMPLATES` are the 80 ImageNet prompts from OpenAI's CLIP zero-shot notebook, the
set every published CLIP ImageNet number (the CLIP-MoE paper's included) is computed with. Order
does not change the result (the class embedding is their mean) but is kept as published.
"""

from __future__ import annotations

import os

from ..errors import CLIPMoEError

OPENAI_IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

# The single prompt CLIP uses when no ensemble is wanted.
SIMPLE_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)


def resolve_templates(spec) -> list[str]:
    """`None` / "openai" -> the 80 OpenAI prompts, "simple" -> one prompt, a list -> itself, anything
    else -> a text file with one template per line (blank lines and '#' comments skipped).
    Every template must hold exactly one "{}" for the class name."""
    if spec is None or spec == "openai":
        templates, where = list(OPENAI_IMAGENET_TEMPLATES), "built-in"
    elif spec == "simple":
        templates, where = list(SIMPLE_TEMPLATES), "built-in"
    elif isinstance(spec, (list, tuple)):
        templates, where = list(spec), "templates"
    else:
        from .datasets import read_text_file

        where = os.fspath(spec)
        if not os.path.exists(where):
            raise CLIPMoEError(f"{where}: no such templates file (expected 'openai', 'simple' or a file with one template per line)")
        templates = read_text_file(where, "templates").splitlines()
        for number, line in enumerate(templates, start=1):
            if line.strip() and not line.lstrip().startswith("#") and line.count("{}") != 1:
                raise CLIPMoEError(f"{where}: line {number}: template {line!r} must contain exactly one '{{}}'")
        templates = [t.strip() for t in templates if t.strip() and not t.lstrip().startswith("#")]
    if not templates:
        raise CLIPMoEError(f"{where}: no templates")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise CLIPMoEError(f"{where}: template {t!r} must be a string with exactly one '{{}}'")
    return templates
