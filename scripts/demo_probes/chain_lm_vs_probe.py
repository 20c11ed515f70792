"""Does the chain's LM training (language_model.py) learn what the probe's loop learns?

python scripts/demo_probes/chain_lm_vs_probe.py STEPS OUT_DIR
"""
import os, sys, time, torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # lm_existence_probe.py
import lm_existence_probe as P
from transformers import AutoTokenizer, LlamaForCausalLM
from clipmoe_demo import tiny_llava as tiny, world as W
from clipmoe_demo.chain import data as D, language_model as L

steps, out = int(sys.argv[1]), sys.argv[2]
torch.set_num_threads(1)
settings = W.WorldSettings(image_size=48)
corpus = [P.scene("train", i, settings) for i in range(P.CORPUS_SCENES)]
tokenizer = tiny.build_tokenizer(out, tiny.conversation_corpus(D.pretrain_records(corpus), D.finetune_records(corpus), joined=True), vocab_size=1000)
tiny.build_llm(out, len(tokenizer), 0, hidden_size=128, intermediate_size=256, num_hidden_layers=2)
texts = [s["caption"] for s in corpus] + [L.text_conversation(s, 0) for s in W.text_scenes(settings, steps * 16)]
t = time.perf_counter()
h = L.train_language_model(out, texts, steps, 16, 3e-3, 0)
print("trained", round(time.perf_counter() - t), "s; loss", h[-1])
print(P.Evaluation(AutoTokenizer.from_pretrained(out), settings)(LlamaForCausalLM.from_pretrained(out)))
