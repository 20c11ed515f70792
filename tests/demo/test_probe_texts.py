"""The language-model probe's denser training text (scripts/demo_probes/lm_existence_probe.py):
the turns it promises, each answered as the scene says."""

import re

from clipmoe_demo import world as W
from clipmoe_demo.chain import data as D

from . import probe_script


def _turns(text: str) -> list[tuple[str, str]]:
    """(question, answer) pairs of a vicuna_v1 prompt: each "USER: ... ASSISTANT: answer</s>"."""
    return [(q.strip(), a.strip()) for q, a in re.findall(r"USER: (.*?) ASSISTANT: (.*?)</s>", text, flags=re.S)]


def test_dense_conversation_has_the_asked_turns_with_right_answers():
    probe = probe_script("lm_existence_probe")
    settings = W.WorldSettings(image_size=48)
    for index in range(20):
        scene = probe.scene("train", index, settings)
        turns = _turns(probe.conversation_text(scene, existence_pairs=2, mc_turns=3))
        assert len(turns) == 2 * 2 + 3
        assert turns[0][0].startswith(scene["caption"])  # the caption stands where the image was
        existence = [(q, a) for q, a in turns if "Is there" in q]
        assert sorted(a for _, a in existence) == ["No", "No", "Yes", "Yes"]
        present = D.present_pairs(scene)
        for question, answer in existence:
            colour, shape = re.search(r"Is there an? (\w+) (\w+) in the image", question).groups()
            assert ((colour, shape) in present) == (answer == "Yes")
        choices = [(q, a) for q, a in turns if "A. " in q]
        assert len(choices) == 3
        for question, letter in choices:
            lines = question.split("\n")
            options = dict(re.findall(r"^([ABCD])\. (.+)$", question, flags=re.M))
            asked = lines[lines.index(f"A. {options['A']}") - 1]  # the line before the options
            right = {item["answer"] for item in D.scene_questions(scene) if item["question"] == asked}
            assert options[letter] in right
    # without the flags: the chain's own four-turn conversation
    assert len(_turns(probe.conversation_text(probe.scene("train", 0, settings)))) == 4
