"""The whole-system demo of CLIP-MoE on an embedded default, built from the three product packages
(clipmoe_encoder, llava_integration, eval_mllm) as an application of them; none of them imports it.

  world.py        a seeded procedural image-caption world (coloured shapes) and its tokenizer
  encoder/        dense CLIP trained on it -> direct FT / sparse upcycling / DMU -> zero-shot report
  tiny_llava.py   tiny Llama + sentencepiece tokenizer + CLIP-MoE tower + LLaVA data, built in code
  chain/          encoder demo -> LLaVA trained with each tower -> benchmarks -> one report

    clipmoe-demo encoder --out DIR [--quick]
    clipmoe-demo chain --out DIR [--quick]
"""
