"""The language-model probe's denser training text (scripts/demo_probes/lm_existence_probe.py):
the turns it promises, each answered as the scene says."""

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
