"""Checks of the language model's training text: a vicuna_v1 prompt's turns, each answered as
its scene says (used by the probe's and the chain's text tests)."""

import re

from clipmoe_demo.chain import data as D


def turns(text: str) -> list[tuple[str, str]]:
    """(question, answer) pairs of a vicuna_v1 prompt: each "USER: ... ASSISTANT: answer</s>"."""
    return [(q.strip(), a.strip()) for q, a in re.findall(r"USER: (.*?) ASSISTANT: (.*?)</s>", text, flags=re.S)]


def kinds(asked: list[tuple[str, str]]) -> dict:
    """The turns by kind: existence ("Is there ..."), four-option ("A. ..."), short answer (the rest)."""
    out = {"existence": [], "choice": [], "short": []}
    for question, answer in asked:
        kind = "existence" if "Is there" in question else "choice" if "\nA. " in question else "short"
        out[kind].append((question, answer))
    return out


def assert_answered_as_the_scene_says(scene: dict, asked: list[tuple[str, str]]) -> None:
    assert asked[0][0].startswith(scene["caption"])  # the caption stands where the image was
    present = D.present_pairs(scene)
    by_question = {}
    for item in D.scene_questions(scene):
        by_question.setdefault(item["question"], set()).add(item["answer"])
    by_kind = kinds(asked)
    for question, answer in by_kind["existence"]:
        colour, shape = re.search(r"Is there an? (\w+) (\w+) in the image", question).groups()
        assert ((colour, shape) in present) == (answer == "Yes")
    for question, letter in by_kind["choice"]:
        lines = question.split("\n")
        options = dict(re.findall(r"^([ABCD])\. (.+)$", question, flags=re.M))
        asked_line = lines[lines.index(f"A. {options['A']}") - 1]  # the line before the options
        assert options[letter] in by_question[asked_line]
    for question, answer in by_kind["short"]:
        lines = question.split("\n")
        assert answer in by_question[lines[-2]]  # the question, then the short-answer instruction
