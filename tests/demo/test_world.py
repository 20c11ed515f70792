"""The procedural world: determinism, and captions that say what the attributes and pixels show."""

import os
import re

import numpy as np
import pytest

from clipmoe_demo import world as W

SETTINGS = W.WorldSettings(image_size=32, n_train=12, n_test=6, seed=3)


def scenes(n=150, split="train", settings=SETTINGS):
    return [W.make_scene(settings, split, i) for i in range(n)]


def test_same_seed_same_scene_and_pixels():
    for i in range(5):
        a, im_a = W.make_scene(SETTINGS, "train", i)
        b, im_b = W.make_scene(SETTINGS, "train", i)
        assert a.to_dict() == b.to_dict()
        assert np.array_equal(np.asarray(im_a), np.asarray(im_b))


def test_splits_and_seeds_differ():
    train = [s.to_dict()["objects"] for s, _ in scenes(20)]
    test = [s.to_dict()["objects"] for s, _ in scenes(20, "test")]
    other_seed = [s.to_dict()["objects"] for s, _ in scenes(20, settings=W.WorldSettings(image_size=32, seed=4))]
    assert train != test and train != other_seed
    assert len({str(t) for t in train}) == 20  # no two scenes alike


def test_scene_i_does_not_depend_on_world_size():
    small = W.WorldSettings(image_size=32, n_train=5, seed=3)
    assert W.make_scene(small, "train", 4)[0].to_dict() == W.make_scene(SETTINGS, "train", 4)[0].to_dict()


def test_detailed_caption_names_every_group_attribute():
    for scene, _ in scenes():
        caption = scene.detailed_caption()
        assert caption.startswith(scene.prefix)
        for g in scene.groups:
            phrase = W.noun_phrase(g, detailed=True) + " " + W.REGION_PHRASES[g.region]
            assert phrase in caption
            noun = W.PLURALS[g.shape] if g.count > 1 else g.shape
            assert re.search(rf"\b{W.COUNT_WORDS[g.count] if g.count > 1 else 'an?'} {g.size} {g.colour} {noun}\b", caption)
            assert ("pointing " + g.orientation in caption) if g.orientation else True
        assert scene.short_caption() == scene.prefix + W.noun_phrase(scene.main, detailed=False)
        assert scene.main.colour in scene.short_caption() and scene.main.shape in scene.short_caption()


def test_objects_match_their_groups_and_regions():
    for scene, _ in scenes():
        assert 1 <= len(scene.groups) and sum(g.count for g in scene.groups) <= SETTINGS.max_objects
        for gi, g in enumerate(scene.groups):
            members = [o for o in scene.objects if o.group == gi]
            assert len(members) == g.count
            x0, y0, x1, y1 = W.REGIONS[g.region]
            for o in members:
                assert (o.shape, o.colour, o.size, o.orientation, o.region) == (g.shape, g.colour, g.size, g.orientation, g.region)
                assert x0 <= o.x - o.radius and o.x + o.radius <= x1 and y0 <= o.y - o.radius and o.y + o.radius <= y1
            assert (g.orientation is not None) == (g.shape in W.ORIENTED)
        for a in scene.objects:  # no two objects overlap
            for b in scene.objects:
                if a is not b:
                    assert np.hypot(a.x - b.x, a.y - b.y) >= a.radius + b.radius
        regions = [g.region for g in scene.groups]
        assert all(W._disjoint(a, b) for i, a in enumerate(regions) for b in regions[i + 1:])


@pytest.mark.parametrize("size", [32, 64])
def test_pixels_show_the_objects_colour(size):
    settings = W.WorldSettings(image_size=size, seed=1)
    for scene, image in scenes(60, settings=settings):
        pixels = np.asarray(image).astype(int)
        assert image.size == (size, size)
        for o in scene.objects:
            centre = pixels[int(o.y * size), int(o.x * size)]
            assert np.abs(centre - np.array(W.COLOURS[o.colour])).max() <= 45, (scene.to_dict(), o)
        # background everywhere far from every object
        ys, xs = np.mgrid[0:size, 0:size]
        far = np.ones((size, size), bool)
        for o in scene.objects:
            far &= np.hypot((xs + 0.5) / size - o.x, (ys + 0.5) / size - o.y) > o.radius + 2.0 / size
        assert np.abs(pixels[far] - np.array(W.BACKGROUND)).max() <= 1


def test_every_attribute_value_occurs():
    seen = {"shape": set(), "colour": set(), "size": set(), "count": set(), "region": set(), "orientation": set()}
    for scene, _ in scenes(400):
        for g in scene.groups:
            for k, values in seen.items():
                values.add(getattr(g, k))
    assert seen["shape"] == set(W.SHAPES) and seen["colour"] == set(W.COLOURS) and seen["size"] == set(W.SIZES)
    assert seen["count"] == {1, 2, 3, 4} and seen["region"] == set(W.REGIONS)
    assert seen["orientation"] - {None} == set(W.ORIENTED["triangle"])


def test_task_labels_only_where_groups_agree():
    tasks = W.classification_tasks()
    n_labelled = 0
    for scene, _ in scenes():
        d = scene.to_dict()
        for spec in tasks.values():
            label = W.task_label(d, spec["attribute"], spec["classnames"])
            values = {g[spec["attribute"]] for g in d["groups"]}
            assert (label is None) == (len(values) > 1)
            if label is not None:
                n_labelled += 1
                assert spec["classnames"][label] == str(scene.main.__dict__[spec["attribute"]])
        for spec in tasks.values():
            assert all(t.count("{}") == 1 for t in spec["templates"] or [])
            assert len(spec["prompts"]) == len(spec["classnames"]) and all(spec["prompts"])
    assert n_labelled > 100


def test_count_prompts_name_the_count_in_plural():
    count = W.classification_tasks()["count"]
    assert count["classnames"] == ["1", "2", "3", "4"]
    assert "a picture of a red circle." in count["prompts"][0]
    assert "a picture of three red circles." in count["prompts"][2]
    assert not any("circles" in p for p in count["prompts"][0])  # one object: singular
    assert len(set(map(len, count["prompts"]))) == 1  # every class ensembles over the same colours and shapes


def test_vocabulary_covers_captions_and_prompts():
    vocab = set(W.vocabulary())
    texts = [s.detailed_caption() for s, _ in scenes()] + [s.short_caption() for s, _ in scenes()]
    for spec in W.classification_tasks().values():
        texts += [p for class_prompts in spec["prompts"] for p in class_prompts]
    for text in texts:
        assert set(re.findall(r"\w+|[^\w\s]+", text)) <= vocab, text


def test_write_world_files_and_reuse(tmp_path):
    from clipmoe_encoder.dmu.data import load_records

    meta = W.write_world(str(tmp_path), SETTINGS)
    assert meta["settings"]["n_train"] == 12
    for split, n in (("train", 12), ("test", 6)):
        records, report = load_records(str(tmp_path / f"{split}.jsonl"))
        assert report["kept"] == n and all(os.path.isfile(r.image) for r in records)
        scene_rows = W.read_scenes(str(tmp_path), split)
        assert [s["index"] for s in scene_rows] == list(range(n))
        for rec, s in zip(records, scene_rows):
            assert rec.image == str(tmp_path / s["image"])
            assert rec.caption in (s["caption"], s["short_caption"])
            if split == "test":
                assert rec.caption == s["caption"]
            assert W.make_scene(SETTINGS, split, s["index"])[0].to_dict()["caption"] == s["caption"]
    image = tmp_path / "images" / "train" / "000000.png"
    stamp = os.stat(image).st_mtime_ns
    assert W.write_world(str(tmp_path), SETTINGS) == meta
    assert os.stat(image).st_mtime_ns == stamp  # reused, not redrawn
    # other settings: written again
    W.write_world(str(tmp_path), W.WorldSettings(image_size=32, n_train=3, n_test=2, seed=3))
    assert len(W.read_scenes(str(tmp_path), "train")) == 3
