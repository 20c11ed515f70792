"""Zero-shot CLIP metrics (the usual protocol) and the evaluations that produce them.

Embeddings are L2-normalised and similarity is `image @ text.T`. Ranks follow a stable sort by
descending similarity: candidates with equal scores keep their input order, so a tie is won by the
lower index (what `torch.sort(..., descending=True, stable=True)` gives). Ranks are counted, not
sorted, in row chunks, so 31k images x 155k captions need neither a full sort nor a 31k x 155k
matrix at once.

- I2T R@K: an image counts if any of its captions ranks in the top K texts (its best caption).
- T2I R@K: a caption counts if its image ranks in the top K images.
- top-K accuracy: the true class ranks in the top K classes. With fewer than K classes every image
  counts (top-5 on a 3-class set is 100%).
All values are percentages.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import CLIPMoEError

_CHUNK_ELEMENTS = 1 << 24  # similarity entries held at once (64 MB of float32)


def _stable_rank(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0-based rank of column target[r] in row r under a stable descending sort."""
    t = scores.gather(1, target[:, None])
    columns = torch.arange(scores.shape[1], device=scores.device)
    ahead = (scores > t) | ((scores == t) & (columns[None, :] < target[:, None]))
    return ahead.sum(dim=1)


def _rows(n: int, width: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(width, 1))


def _check_embeddings(a: torch.Tensor, b: torch.Tensor, what_a: str, what_b: str):
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise CLIPMoEError(f"{what_a} {list(a.shape)} and {what_b} {list(b.shape)} must be 2-D with the same width")
    return a.float(), b.float().to(a.device)


def retrieval_recall(image_emb: torch.Tensor, text_emb: torch.Tensor, text_image_ids, ks=(1, 5, 10)) -> dict:
    """Image->text and text->image recall@K (percent); `text_image_ids[j]` is the index of caption
    j's image. Images without a caption are left out of the image->text average (they still
    compete as text->image candidates)."""
    image_emb, text_emb = _check_embeddings(image_emb, text_emb, "image embeddings", "text embeddings")
    n_images, n_texts = image_emb.shape[0], text_emb.shape[0]
    owner = torch.as_tensor(text_image_ids, dtype=torch.long, device=image_emb.device).reshape(-1)
    if owner.numel() != n_texts:
        raise CLIPMoEError(f"{owner.numel()} text_image_ids for {n_texts} text embeddings")
    if n_texts and (owner.min() < 0 or owner.max() >= n_images):
        raise CLIPMoEError(f"text_image_ids must lie in 0..{n_images - 1}, found {int(owner.min())}..{int(owner.max())}")

    i2t, step = [], _rows(n_images, n_texts)
    text_index = torch.arange(n_texts, device=owner.device)
    for start in range(0, n_images, step):
        sims = image_emb[start:start + step] @ text_emb.T
        n = sims.shape[0]
        # each image's best caption: highest score, ties to the lowest index (first in stable
        # order). Scatter over the chunk's own captions only, never an images x texts mask.
        mine = (owner >= start) & (owner < start + n)
        rows, cols = owner[mine] - start, text_index[mine]
        own_scores = sims[rows, cols]
        best_score = torch.full((n,), float("-inf"), device=sims.device).scatter_reduce(0, rows, own_scores, "amax")
        first = own_scores == best_score[rows]
        best = torch.full((n,), n_texts, dtype=torch.long, device=sims.device).scatter_reduce(0, rows[first], cols[first], "amin")
        has = best < n_texts  # images without a caption stay out of the image->text average
        i2t.append(_stable_rank(sims[has], best[has]))
    t2i, step = [], _rows(n_texts, n_images)
    for start in range(0, n_texts, step):
        sims = text_emb[start:start + step] @ image_emb.T
        t2i.append(_stable_rank(sims, owner[start:start + sims.shape[0]]))
    i2t_ranks, t2i_ranks = torch.cat(i2t), torch.cat(t2i)

    out = {}
    for k in ks:
        out[f"i2t_r{k}"] = _percent(i2t_ranks < k)
    for k in ks:
        out[f"t2i_r{k}"] = _percent(t2i_ranks < k)
    return out


def _percent(hits: torch.Tensor) -> float:
    if hits.numel() == 0:
        raise CLIPMoEError("nothing to score: no image has a caption / no labelled image")
    return float(hits.double().mean() * 100.0)


def zero_shot_classifier(encoder, classnames: Sequence[str], templates=None, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
    """(C, D) class embeddings: each is the normalised mean of its normalised prompt embeddings
    (the class name put into every template; the OpenAI 80 when `templates` is None)."""
    from .templates import resolve_templates

    templates = resolve_templates(templates)
    if not classnames:
        raise CLIPMoEError("no class names")
    return prompt_classifier(encoder, [[t.replace("{}", name) for t in templates] for name in classnames],
                             batch_size=batch_size, progress=progress)


def prompt_classifier(encoder, prompts: Sequence[Sequence[str]], batch_size: int = 256, progress: bool = False) -> torch.Tensor:
    """(C, D) class embeddings from each class's own prompts (lists may differ in length and wording,
    for classes no single template writes): the normalised mean of its normalised prompt embeddings."""
    if not prompts or not all(prompts):
        raise CLIPMoEError("every class needs at least one prompt")
    flat = [p for class_prompts in prompts for p in class_prompts]
    emb = _as_encoder(encoder).encode_texts(flat, batch_size=batch_size, progress=progress)
    emb = F.normalize(emb.float(), dim=-1)  # already unit length from an encoder; cheap to be sure
    return F.normalize(torch.stack([chunk.mean(0) for chunk in emb.split([len(p) for p in prompts])]), dim=-1)


def classification_accuracy(image_emb: torch.Tensor, labels, classifier: torch.Tensor, ks=(1, 5)) -> dict:
    """Top-K accuracy (percent) of `image_emb @ classifier.T` against integer `labels`."""
    image_emb, classifier = _check_embeddings(image_emb, classifier, "image embeddings", "classifier")
    labels = torch.as_tensor(labels, dtype=torch.long, device=image_emb.device).reshape(-1)
    if labels.numel() != image_emb.shape[0]:
        raise CLIPMoEError(f"{labels.numel()} labels for {image_emb.shape[0]} images")
    n_classes = classifier.shape[0]
    if labels.numel() and (labels.min() < 0 or labels.max() >= n_classes):
        raise CLIPMoEError(f"labels must lie in 0..{n_classes - 1}, found {int(labels.min())}..{int(labels.max())}")
    ranks = []
    step = _rows(image_emb.shape[0], n_classes)
    for start in range(0, image_emb.shape[0], step):
        ranks.append(_stable_rank(image_emb[start:start + step] @ classifier.T, labels[start:start + step]))
    ranks = torch.cat(ranks)
    return {f"top{k}": _percent(ranks < k) for k in ks}


def _as_encoder(encoder):
    """A ZeroShotEncoder (or anything with encode_images / encode_texts) as is; else a load_encoder spec."""
    if hasattr(encoder, "encode_images") and hasattr(encoder, "encode_texts"):
        return encoder
    from .encoders import load_encoder

    return load_encoder(encoder)


def _on(emb: torch.Tensor, encoder) -> torch.Tensor:
    # rank on the model's device: on a GPU the 31k x 155k Flickr comparisons take seconds, not minutes
    return emb.to(getattr(encoder, "device", emb.device))


def evaluate_retrieval(encoder, images, captions_per_image, batch_size: int = 64, text_batch_size: int = 256,
                       progress: bool = False, ks=(1, 5, 10)) -> dict:
    """Zero-shot retrieval: `images` (PIL images or paths, opened batch by batch) and, for image i,
    its captions `captions_per_image[i]`. Returns the recalls plus num_images / num_texts."""
    if len(images) != len(captions_per_image):
        raise CLIPMoEError(f"{len(images)} images but {len(captions_per_image)} caption lists")
    texts, owner = [], []
    for i, caps in enumerate(captions_per_image):
        caps = [caps] if isinstance(caps, str) else list(caps)
        texts += caps
        owner += [i] * len(caps)
    encoder = _as_encoder(encoder)
    image_emb = encoder.encode_images(images, batch_size=batch_size, progress=progress)
    text_emb = encoder.encode_texts(texts, batch_size=text_batch_size, progress=progress)
    out = retrieval_recall(_on(image_emb, encoder), _on(text_emb, encoder), owner, ks)
    out.update(num_images=len(images), num_texts=len(texts))
    return out


def evaluate_classification(encoder, images, labels, classnames, templates=None, batch_size: int = 64,
                            text_batch_size: int = 256, progress: bool = False, ks=(1, 5)) -> dict:
    """Zero-shot classification: top-K accuracy plus num_images / num_classes / num_templates."""
    from .templates import resolve_templates

    if len(images) != len(labels):
        raise CLIPMoEError(f"{len(images)} images but {len(labels)} labels")
    templates = resolve_templates(templates)
    encoder = _as_encoder(encoder)
    classifier = zero_shot_classifier(encoder, classnames, templates, batch_size=text_batch_size, progress=progress)
    image_emb = encoder.encode_images(images, batch_size=batch_size, progress=progress)
    out = classification_accuracy(_on(image_emb, encoder), labels, _on(classifier, encoder), ks)
    out.update(num_images=len(images), num_classes=len(classnames), num_templates=len(templates))
    return out
