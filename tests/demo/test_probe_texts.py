"""The language-model probe's denser training text (scripts/demo_probes/lm_existence_probe.py):
the turns it promises, each answered as the scene says."""

import json
import os

from clipmoe_demo import world as W

from . import probe_script
from .text_checks import assert_answered_as_the_scene_says, kinds, turns


def test_dense_conversation_has_the_asked_turns_with_right_answers():
    probe = probe_script("lm_existence_probe")
    settings = W.WorldSettings(image_size=48)
    for index in range(20):
        scene = probe.scene("train", index, settings)
        asked = turns(probe.conversation_text(scene, existence_pairs=2, mc_turns=3))
        by_kind = kinds(asked)
        assert len(asked) == 2 * 2 + 3 and len(by_kind["choice"]) == 3
        assert sorted(a for _, a in by_kind["existence"]) == ["No", "No", "Yes", "Yes"]
        assert_answered_as_the_scene_says(scene, asked)
    # without the flags: the chain's own four-turn conversation
    assert len(turns(probe.conversation_text(probe.scene("train", 0, settings)))) == 4


def test_a_shape_twin_differs_from_its_scene_in_shape_only(tmp_path):
    """base_variant.py --shape-twins: each twin keeps colours, sizes, counts, places and caption
    style, changes every group's shape, and lands in the same batch as its scene."""
    probe = probe_script("base_variant")
    settings = W.WorldSettings(image_size=32, n_train=40, n_test=4)
    world = str(tmp_path / "world")
    W.write_world(world, settings)
    groups = probe.add_shape_twins(world, batch=8)
    assert probe.add_shape_twins(world, batch=8) == groups  # a rerun adds no second set of twins
    scenes = W.read_scenes(world, "train")
    with open(os.path.join(world, "train.jsonl")) as f:
        captions = [json.loads(line)["caption"] for line in f]
    n = settings.n_train
    assert len(scenes) == len(captions) == len(groups) == 2 * n
    for i in range(n):
        scene, twin = scenes[i], scenes[n + i]
        assert groups[i] == groups[n + i] == i // 4  # 4 scenes and their 4 twins per batch of 8
        for g, t in zip(scene["groups"], twin["groups"], strict=True):
            assert t["shape"] != g["shape"]
            assert {k: v for k, v in t.items() if k not in ("shape", "orientation")} == \
                   {k: v for k, v in g.items() if k not in ("shape", "orientation")}
            assert (t["orientation"] is not None) == (t["shape"] in W.ORIENTED)
        assert len({(t["shape"], t["colour"]) for t in twin["groups"]}) == len(twin["groups"])
        assert [(o["x"], o["y"], o["colour"]) for o in twin["objects"]] == [(o["x"], o["y"], o["colour"]) for o in scene["objects"]]
        style = "short_caption" if captions[i] == scene["short_caption"] else "caption"
        assert captions[n + i] == twin[style] != scene[style]
        assert os.path.isfile(os.path.join(world, twin["image"]))
