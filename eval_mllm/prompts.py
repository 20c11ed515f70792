"""The instructions LLaVA-1.5's evaluation appends to questions, written once.

Benchmarks (eval_mllm.benchmarks), question readers, the lmms-eval tasks, scorers that take the
instruction off a prompt, and the demo's procedural benchmarks all read them from here.
"""

# Short answers (GQA, POPE, TextVQA, VQAv2, VizWiz; MME's prompts end in their own yes/no line).
SHORT_ANSWER = "Answer the question using a single word or phrase."
# Multiple choice (ScienceQA, MMBench), as model_vqa_science / model_vqa_mmbench append it.
MULTIPLE_CHOICE = "Answer with the option's letter from the given choices directly."
MULTIPLE_CHOICE_CN = "请直接回答选项字母。"
# MME's own closing line (in the release's questions; LLaVA's llava_mme.jsonl keeps it).
YES_NO = "Please answer yes or no."


def with_instruction(question: str, instruction: str) -> str:
    """The question as LLaVA's question files write it: the instruction on its own last line."""
    return f"{question}\n{instruction}" if instruction else question
