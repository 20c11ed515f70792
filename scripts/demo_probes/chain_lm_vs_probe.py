"""Does the chain's LM training (language_model.py) learn what the probe's loop learns?

python scripts/demo_probes/chain_lm_vs_probe.py STEPS OUT_DIR [--distinct] [--eval-every N]
                                                  [--short-turns N] [--mc-turns N] [--existence-pairs N]
                                                  [--captions] [--layers N] [--hidden N]

The chain's texts (as language_model.text_conversation) for STEPS x 16 text scenes, trained by
language_model.train_language_model, evaluated by the probe's Evaluation.
--distinct: conversations that never ask a question twice (distinct_turns below) instead of
data.dense_turns' draws, to test whether answers copied from an earlier turn hold the LM back
(1,000 steps: balanced 75.4 / four-option 24.5 as the chain draws; 50.2 / 25.5 distinct).
--eval-every N: also evaluate every N steps on the way (does a longer run lose what a shorter
one learned?).
--short-turns N (the chain: TEXT_TURNS) and --captions (the 2,400 stage-1 captions beside them, as
the chain trained until 3,000 steps showed: with --short-turns 1 --captions 76.5 / 19.5, with
--short-turns 0 and no captions 78.3 / 35.0; these are the texts lm_existence_probe.py --fresh
--existence-pairs 2 --mc-turns 3 trains on, through the chain's loop).
"""
import argparse, os, random, sys, time, torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # lm_existence_probe.py
import lm_existence_probe as P
from transformers import AutoTokenizer, LlamaForCausalLM
from clipmoe_demo import tiny_llava as tiny, world as W
from clipmoe_demo.chain import data as D, language_model as L


def distinct_turns(scene, rng, existence_pairs, mc_turns, short_turns=0):
    """As data.dense_turns, but no question twice: up to existence_pairs distinct present pairs,
    each with a distinct absent one (a near miss or a random pair, as existence_turns draws
    them), and the scene's questions split without repeats between four-option and short turns."""
    present = sorted(D.present_pairs(scene))
    asked, negatives = [], set()
    for colour, shape in rng.sample(present, min(existence_pairs, len(present))):
        absent = [p for p in D.ALL_PAIRS if p not in present and p not in negatives]
        near = [p for p in absent if any(p[0] == c or p[1] == s for c, s in present)]
        negative = rng.choice(near if near and rng.random() < 0.5 else absent)
        negatives.add(negative)
        asked += [(f"{D.existence_question(colour, shape)}\n{D.SHORT_ANSWER}", "Yes"),
                  (f"{D.existence_question(*negative)}\n{D.SHORT_ANSWER}", "No")]
    questions = D.scene_questions(scene)
    rng.shuffle(questions)
    asked += [D.mc_turn(item, rng) for item in questions[:mc_turns]]
    asked += [D.short_turn(item) for item in questions[mc_turns:mc_turns + short_turns]]
    rng.shuffle(asked)
    return asked


p = argparse.ArgumentParser()
p.add_argument("steps", type=int)
p.add_argument("out")
p.add_argument("--distinct", action="store_true")
p.add_argument("--eval-every", type=int, default=0)
p.add_argument("--short-turns", type=int, default=L.TEXT_TURNS["short_turns"])
p.add_argument("--mc-turns", type=int, default=L.TEXT_TURNS["mc_turns"])
p.add_argument("--existence-pairs", type=int, default=L.TEXT_TURNS["existence_pairs"])
p.add_argument("--captions", action="store_true")
p.add_argument("--layers", type=int, default=2, help="the LM's depth (the chain's: 2)")
p.add_argument("--hidden", type=int, default=128, help="the LM's width (the chain's: 128)")
a = p.parse_args()
draw = distinct_turns if a.distinct else D.dense_turns


turns = {"existence_pairs": a.existence_pairs, "mc_turns": a.mc_turns, "short_turns": a.short_turns}


def text(s):  # language_model.text_conversation(s, 0), with this run's draws
    return L.vicuna_text(D.conversation(draw(s, random.Random(f"0-text-{s['index']}"), **turns)), s["caption"])


torch.set_num_threads(1)
settings = W.WorldSettings(image_size=48)
corpus = [P.scene("train", i, settings) for i in range(P.CORPUS_SCENES)]
tokenizer = tiny.build_tokenizer(a.out, tiny.conversation_corpus(D.pretrain_records(corpus), D.finetune_records(corpus), joined=True), vocab_size=1000)
tiny.build_llm(a.out, len(tokenizer), 0, hidden_size=a.hidden, intermediate_size=2 * a.hidden, num_hidden_layers=a.layers)
texts = ([s["caption"] for s in corpus] if a.captions else []) + [text(s) for s in W.text_scenes(settings, a.steps * 16)]
evaluate = P.Evaluation(AutoTokenizer.from_pretrained(a.out), settings)
t = time.perf_counter()


def on_the_way(step, model):
    if a.eval_every and step % a.eval_every == 0 and step < a.steps:
        print(step, evaluate(model), f"{time.perf_counter() - t:.0f} s", flush=True)


h = L.train_language_model(a.out, texts, a.steps, 16, 3e-3, 0, after_step=on_the_way)
print("distinct" if a.distinct else "dense", turns, "captions" if a.captions else "no captions", "trained", round(time.perf_counter() - t), "s; loss", h[-1])
print(a.steps, evaluate(LlamaForCausalLM.from_pretrained(a.out)))
