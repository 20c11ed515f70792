"""Can the demo base's image tower learn shape at all? The same tower (size and initialisation of
the demo's base), trained on shape labels directly (cross-entropy of a linear head on its image
embedding) instead of captions; prints held-out shape top-1 every so often.

python scripts/demo_probes/shape_supervised.py --world DEMO/world [--steps 1000] [--eval-every 100]

Only scenes whose groups all have one shape are used (the label is then unambiguous), as the
zero-shot shape task does.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch
from PIL import Image
from transformers import CLIPModel, get_cosine_schedule_with_warmup

from clipmoe_demo import world as W
from clipmoe_demo.encoder.base import image_processor, write_base_init

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # base_variant.py: the same tower, built the same way
from base_variant import add_tower_arguments, tower_size  # noqa: E402


def labelled_images(world_dir: str, split: str, processor) -> tuple[torch.Tensor, torch.Tensor]:
    pixels, labels = [], []
    for scene in W.read_scenes(world_dir, split):
        label = W.task_label(scene, "shape", list(W.SHAPES))
        if label is not None:
            pixels.append(Image.open(os.path.join(world_dir, scene["image"])).convert("RGB"))
            labels.append(label)
    return processor(images=pixels, return_tensors="pt")["pixel_values"], torch.tensor(labels)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", required=True)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50)
    add_tower_arguments(p)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    image_size = W.read_settings(a.world).image_size
    size = tower_size(a, image_size)
    processor = image_processor(image_size)
    train_x, train_y = labelled_images(a.world, "train", processor)
    test_x, test_y = labelled_images(a.world, "test", processor)
    with tempfile.TemporaryDirectory() as init:  # the base's own initialisation for this seed
        model = CLIPModel.from_pretrained(write_base_init(init, size, W.vocabulary(), a.seed))
    head = torch.nn.Linear(size.projection_dim, len(W.SHAPES))
    params = [*model.vision_model.parameters(), *model.visual_projection.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.1)
    schedule = get_cosine_schedule_with_warmup(optimizer, a.warmup, a.steps)  # the base trainer's schedule
    generator = torch.Generator().manual_seed(a.seed)

    def logits(x):  # the head reads the tower's image embedding, what the contrastive loss compares
        return head(model.visual_projection(model.vision_model(pixel_values=x).pooler_output))

    for step in range(1, a.steps + 1):
        batch = torch.randint(len(train_y), (a.batch,), generator=generator)
        loss = torch.nn.functional.cross_entropy(logits(train_x[batch]), train_y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % a.eval_every == 0 or step == a.steps:
            with torch.no_grad():
                top1 = (logits(test_x).argmax(-1) == test_y).float().mean().item()
            print(f"{step} loss {loss.item():.3f} shape_top1 {100 * top1:.1f} "
                  f"(train {len(train_y)} / held-out {len(test_y)} single-shape scenes)", flush=True)


if __name__ == "__main__":
    main()
