"""A procedural image-caption world: scenes of coloured shapes, each with structured attributes,
a short and a detailed caption, drawn with PIL.

Every scene is a list of *groups* (objects that share shape, colour, size and orientation) placed
in disjoint regions of the image. The attributes are kept as data (`Scene.to_dict()`) beside the
captions so later stages (question/answer generation for an MLLM) can ask about them without
parsing text. Scene i of a split is drawn from its own RNG stream (seed, split, i), so the world is
the same on every run and a larger world extends a smaller one rather than reshuffling it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars", "cross": "crosses",
           "diamond": "diamonds"}
# Only asymmetric shapes carry an orientation (a triangle's apex direction).
ORIENTED = {"triangle": ("up", "down", "left", "right")}
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 90, 235), "yellow": (235, 215, 40),
           "purple": (150, 60, 205), "orange": (245, 135, 25)}
SIZES = {"small": 0.09, "large": 0.16}  # radius as a fraction of the image side
COUNT_WORDS = {1: "a", 2: "two", 3: "three", 4: "four"}
BACKGROUND = (28, 28, 32)

# Regions as (x0, y0, x1, y1) fractions of the image, with the phrase that names them.
REGIONS = {
    "top left": (0.0, 0.0, 0.5, 0.5), "top right": (0.5, 0.0, 1.0, 0.5),
    "bottom left": (0.0, 0.5, 0.5, 1.0), "bottom right": (0.5, 0.5, 1.0, 1.0),
    "left": (0.0, 0.0, 0.5, 1.0), "right": (0.5, 0.0, 1.0, 1.0),
    "top": (0.0, 0.0, 1.0, 0.5), "bottom": (0.0, 0.5, 1.0, 1.0),
    "center": (0.25, 0.25, 0.75, 0.75),
}
REGION_PHRASES = {name: ("in the center" if name == "center" else
                         f"on the {name}" if name in ("left", "right") else f"at the {name}") for name in REGIONS}
# Captions sometimes start with a framing phrase, so prompt templates such as "a picture of a {}."
# are in-distribution for the text tower.
PREFIXES = ("", "a picture of ", "an image of ")
# "text": scenes that exist only as words (the chain's language model reads them; no image is drawn),
# a random stream of their own, disjoint from the images of train and test.
SPLIT_IDS = {"train": 0, "test": 1, "text": 2}


@dataclass
class WorldSettings:
    image_size: int = 64
    n_train: int = 3000
    n_test: int = 500
    seed: int = 0
    group_weights: tuple = (0.5, 0.5)  # P(1 group), P(2 groups), ...
    max_objects: int = 5
    short_caption_prob: float = 0.3  # share of training records whose caption is the short one


@dataclass
class SceneObject:
    shape: str
    colour: str
    size: str
    orientation: str | None
    x: float  # centre, fraction of the image width
    y: float
    radius: float  # fraction of the image side
    region: str
    group: int


@dataclass
class Group:
    shape: str
    colour: str
    size: str
    orientation: str | None
    count: int
    region: str


@dataclass
class Scene:
    groups: list[Group]
    objects: list[SceneObject] = field(default_factory=list)
    prefix: str = ""

    @property
    def main(self) -> Group:
        """The group the short caption and the classification labels are about."""
        return self.groups[0]

    def short_caption(self) -> str:
        return self.prefix + noun_phrase(self.main, detailed=False)

    def detailed_caption(self) -> str:
        parts = [noun_phrase(g, detailed=True) + " " + REGION_PHRASES[g.region] for g in self.groups]
        return self.prefix + (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0])

    def to_dict(self) -> dict:
        return {"groups": [asdict(g) for g in self.groups], "objects": [asdict(o) for o in self.objects],
                "short_caption": self.short_caption(), "caption": self.detailed_caption()}


def noun_phrase(group: Group, detailed: bool) -> str:
    words = [group.size] if detailed else []
    words += [group.colour, PLURALS[group.shape] if group.count > 1 else group.shape]
    article = COUNT_WORDS[group.count]
    if article == "a" and words[0][0] in "aeiou":
        article = "an"
    phrase = " ".join([article] + words)
    if detailed and group.orientation:
        phrase += f" pointing {group.orientation}"
    return phrase


def _disjoint(a: str, b: str) -> bool:
    ax0, ay0, ax1, ay1 = REGIONS[a]
    bx0, by0, bx1, by1 = REGIONS[b]
    return ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0


def sample_scene(rng: np.random.Generator, settings: WorldSettings) -> Scene:
    """Draw groups, then place their objects without overlap; a layout that does not fit is redrawn
    (with the same RNG, so the result stays deterministic)."""
    while True:
        n_groups = int(rng.choice(len(settings.group_weights), p=np.asarray(settings.group_weights) / sum(settings.group_weights))) + 1
        groups, regions = [], []
        for _ in range(n_groups):
            free = [r for r in REGIONS if all(_disjoint(r, used) for used in regions)]
            if not free:
                break
            region = str(rng.choice(free))
            shape = str(rng.choice(SHAPES))
            orientation = str(rng.choice(ORIENTED[shape])) if shape in ORIENTED else None
            groups.append(Group(shape, str(rng.choice(list(COLOURS))), str(rng.choice(list(SIZES))), orientation,
                                int(rng.integers(1, 5)), region))
            regions.append(region)
        if len(groups) != n_groups or sum(g.count for g in groups) > settings.max_objects:
            continue
        # Two groups that look alike would make the captions ambiguous about which is where.
        if len({(g.shape, g.colour) for g in groups}) != len(groups):
            continue
        objects = _place(rng, groups, settings.image_size)
        if objects is not None:
            return Scene(groups, objects, str(rng.choice(PREFIXES)))


def _place(rng, groups, image_size, tries=60):
    margin = 1.0 / image_size  # at least a pixel between objects
    objects = []
    for gi, g in enumerate(groups):
        x0, y0, x1, y1 = REGIONS[g.region]
        r = SIZES[g.size]
        if x1 - x0 < 2 * r or y1 - y0 < 2 * r:
            return None
        for _ in range(g.count):
            for _ in range(tries):
                x, y = rng.uniform(x0 + r, x1 - r), rng.uniform(y0 + r, y1 - r)
                if all(math.hypot(x - o.x, y - o.y) >= r + o.radius + margin for o in objects):
                    objects.append(SceneObject(g.shape, g.colour, g.size, g.orientation, float(x), float(y), r, g.region, gi))
                    break
            else:
                return None
    return objects


# ---------------------------------------------------------------------------------------------
# drawing

_SUPERSAMPLE = 4  # draw large, then downsample: anti-aliased edges even at 32 px


def render(scene: Scene, image_size: int, rng: np.random.Generator | None = None) -> Image.Image:
    side = image_size * _SUPERSAMPLE
    image = Image.new("RGB", (side, side), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for o in scene.objects:
        colour = COLOURS[o.colour]
        if rng is not None:  # a little colour jitter so a colour is a range, not one RGB value
            colour = tuple(int(np.clip(c + rng.integers(-18, 19), 0, 255)) for c in colour)
        _draw_shape(draw, o.shape, o.x * side, o.y * side, o.radius * side, o.orientation, colour)
    return image.resize((image_size, image_size), Image.BOX)  # area average: anti-aliasing without ringing


def _draw_shape(draw, shape, cx, cy, r, orientation, colour):
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "square":
        s = r * 0.7  # corners on the bounding circle: placement treats every shape as a disc of radius r
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
    elif shape == "cross":
        w, a = r * 0.32, r * 0.94  # arm corners stay inside the bounding circle
        draw.rectangle([cx - a, cy - w, cx + a, cy + w], fill=colour)
        draw.rectangle([cx - w, cy - a, cx + w, cy + a], fill=colour)
    elif shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.42
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        draw.polygon(points, fill=colour)
    elif shape == "triangle":
        apex = {"up": -math.pi / 2, "down": math.pi / 2, "left": math.pi, "right": 0.0}[orientation]
        points = [(cx + r * math.cos(apex + k * 2 * math.pi / 3), cy + r * math.sin(apex + k * 2 * math.pi / 3)) for k in range(3)]
        draw.polygon(points, fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")


# ---------------------------------------------------------------------------------------------
# vocabulary and zero-shot tasks

def vocabulary() -> list[str]:
    """Every word a caption, class name or prompt template of this world can contain (sorted), so
    the word-level tokenizer never meets an unknown word on in-world text."""
    words = set(SHAPES) | set(PLURALS.values()) | set(COLOURS) | set(SIZES) | set(COUNT_WORDS.values()) | {"an"}
    words |= {w for o in ORIENTED.values() for w in o} | {"pointing"}
    for phrase in list(REGION_PHRASES.values()) + list(PREFIXES):
        words |= set(phrase.split())
    words |= {",", ".", "and"}
    return sorted(words)



def classification_tasks() -> dict[str, dict]:
    """Zero-shot tasks on the main group's attributes. Each class has a list of prompts (its
    embedding is their normalised mean), every prompt an in-world caption: shape, colour and size
    prompts ensemble over the other attributes ("a picture of a red {}." for every colour); count
    prompts are short captions of every colour and shape with that count ("two red circles"), which
    no single template can write (the noun is plural from two on)."""
    shape_templates = ["a picture of a {}.", "an image of a {}."] + [f"a picture of a {c} {{}}." for c in COLOURS]
    colour_templates = [f"a picture of a {{}} {s}." for s in SHAPES]
    size_templates = [f"a picture of a {{}} {c} {s}." for c in COLOURS for s in SHAPES]
    tasks = {
        "shape": {"attribute": "shape", "classnames": list(SHAPES), "templates": shape_templates},
        "colour": {"attribute": "colour", "classnames": list(COLOURS), "templates": colour_templates},
        "size": {"attribute": "size", "classnames": list(SIZES), "templates": size_templates},
    }
    for spec in tasks.values():
        spec["prompts"] = [[t.replace("{}", name) for t in spec["templates"]] for name in spec["classnames"]]
    counts = sorted(COUNT_WORDS)
    tasks["count"] = {"attribute": "count", "classnames": [str(c) for c in counts], "templates": None,
                      "prompts": [[f"a picture of {noun_phrase(Group(s, c, 'small', None, n, 'center'), detailed=False)}."
                                   for c in COLOURS for s in SHAPES] for n in counts]}
    return tasks


def task_label(scene: dict, attribute: str, classnames: list[str]) -> int | None:
    """The class of a scene (dict from Scene.to_dict) for a task, or None when its groups disagree
    on the attribute: "a picture of a circle" fits a scene with a circle and a star equally well.
    Values are compared as text (a count 2 is class "2")."""
    values = {str(g[attribute]) for g in scene["groups"]}
    return classnames.index(values.pop()) if len(values) == 1 else None


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_IDS[split], index])


def make_scene(settings: WorldSettings, split: str, index: int) -> tuple[Scene, Image.Image]:
    rng = scene_rng(settings.seed, split, index)
    scene = sample_scene(rng, settings)
    return scene, render(scene, settings.image_size, rng)


# ---------------------------------------------------------------------------------------------
# on disk

WORLD_FILE = "world.json"


def write_world(world_dir: str, settings: WorldSettings) -> dict:
    """Write images/<split>/<i>.png, <split>.jsonl ({"image", "caption"}: what the trainers read,
    paths relative to world_dir), <split>_scenes.jsonl (the full attributes) and world.json.

    world.json is written last, so its presence with the same settings means a complete world: a
    rerun reuses it, a run interrupted half-way writes it again from scratch."""
    import json
    import os

    wanted = {"settings": asdict(settings), "vocabulary": vocabulary(), "tasks": classification_tasks()}
    wanted["settings"]["group_weights"] = list(settings.group_weights)
    meta_path = os.path.join(world_dir, WORLD_FILE)
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if {k: meta.get(k) for k in wanted} == wanted:
            return meta
    for split, n in (("train", settings.n_train), ("test", settings.n_test)):
        os.makedirs(os.path.join(world_dir, "images", split), exist_ok=True)
        with open(os.path.join(world_dir, f"{split}.jsonl"), "w") as records, \
                open(os.path.join(world_dir, f"{split}_scenes.jsonl"), "w") as scenes:
            for i in range(n):
                scene, image = make_scene(settings, split, i)
                rel = f"images/{split}/{i:06d}.png"
                image.save(os.path.join(world_dir, rel))
                d = scene.to_dict()
                # Training sees both caption styles (a seeded coin per scene); the held-out records
                # carry the detailed caption, which the retrieval evaluation uses.
                caption = d["caption"]
                if split == "train" and scene_rng(settings.seed + 1, split, i).random() < settings.short_caption_prob:
                    caption = d["short_caption"]
                records.write(json.dumps({"image": rel, "caption": caption}) + "\n")
                scenes.write(json.dumps(dict(d, image=rel, index=i)) + "\n")
    with open(meta_path, "w") as f:
        json.dump(wanted, f, indent=1)
    return wanted


def read_settings(world_dir: str) -> WorldSettings:
    """The settings a written world was made with (its world.json)."""
    import json
    import os

    with open(os.path.join(world_dir, WORLD_FILE)) as f:
        settings = json.load(f)["settings"]
    return WorldSettings(**dict(settings, group_weights=tuple(settings["group_weights"])))


def text_scenes(settings: WorldSettings, n: int) -> list[dict]:
    """n scenes of the "text" split, attributes and captions only (drawing no image is what
    makes them cheap), numbered like read_scenes' records."""
    return [dict(sample_scene(scene_rng(settings.seed, "text", i), settings).to_dict(), index=i) for i in range(n)]


def read_scenes(world_dir: str, split: str) -> list[dict]:
    import json
    import os

    with open(os.path.join(world_dir, f"{split}_scenes.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]
