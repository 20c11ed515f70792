"""LLaVA-1.5 (llava-torch) with the CLIP-MoE tower: builder dispatch, reload, generation (aux loss:
test_aux_loss.py)."""


import pytest
import torch

from clipmoe_encoder import CLIPMoEError, CLIPMoEVisionTower

from .conftest import image_batch, prompt_ids, seeded_routers

pytestmark = pytest.mark.legacy


def test_builder_dispatch(world, tmp_path):
    from llava.model.llava_arch import build_vision_tower
    from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    from clipmoe_demo.tiny_llava import llava_model_args

    assert isinstance(build_vision_tower(llava_model_args("clipmoe:" + world.tower)), CLIPMoEVisionTower)
    assert isinstance(build_vision_tower(llava_model_args(world.tower)), CLIPMoEVisionTower)  # CLIP-MoE directory
    dense = tmp_path / "dense-clip"  # any other name still goes to LLaVA's own builder
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                     image_size=32, patch_size=8)).save_pretrained(dense)
    CLIPImageProcessor(crop_size={"height": 32, "width": 32}, size={"shortest_edge": 32}).save_pretrained(dense)
    assert type(build_vision_tower(llava_model_args(str(dense)))) is CLIPVisionTower
    with pytest.raises(CLIPMoEError, match="unknown vision tower 'not-a-tower'"):
        build_vision_tower(llava_model_args("not-a-tower"))


def test_trained_routers_survive_save_and_load_pretrained_model(world, tmp_path):
    from llava.model.builder import load_pretrained_model

    from clipmoe_demo import tiny_llava as tiny

    model, tokenizer = tiny.build_llava(world, mm_vision_moe_tune="routers")
    routers = seeded_routers(model)
    assert model.config.mm_vision_moe_tune == "routers"
    out = str(tmp_path / "llava-tiny-clipmoe")  # LLaVA's loader needs 'llava' in the name
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)

    _, loaded, processor, _ = load_pretrained_model(out, None, "llava-tiny-clipmoe", device="cpu")
    tower = loaded.get_vision_tower()
    assert isinstance(tower, CLIPMoEVisionTower)
    assert loaded.config.clipmoe_vision_config["num_experts"] == 4  # MoE settings persisted
    assert tower.config.num_experts_per_tok == 2 and tower.tune == "routers"
    assert processor.crop_size["height"] == 32
    state = dict(tower.named_parameters(prefix="model.vision_tower"))
    original = CLIPMoEVisionTower("clipmoe:" + world.tower, tiny.llava_model_args(world.tower)).vision_tower
    for name, value in routers.items():
        assert torch.equal(state[name].detach(), value.to(state[name].dtype)), name  # bitwise (loader casts to fp16)
        short = name.split("model.vision_tower.vision_tower.", 1)[1]
        assert not torch.equal(original.get_parameter(short).to(value.dtype), value)  # not the source tower's values
    # every other tower tensor too
    expected = model.get_vision_tower().state_dict()
    for key, value in tower.state_dict().items():
        assert torch.equal(value, expected[key].to(value.dtype)), key


def _greedy_without_cache(model, ids, images, steps, eos):
    tokens = []
    embeds_ids = ids
    for _ in range(steps):
        with torch.no_grad():
            logits = model(input_ids=embeds_ids, images=images, use_cache=False).logits
        nxt = int(logits[0, -1].argmax())
        tokens.append(nxt)
        if nxt == eos:
            break
        embeds_ids = torch.cat([embeds_ids, torch.tensor([[nxt]])], dim=1)
    return tokens


def test_greedy_generate_with_kv_cache_matches_loop_without_cache(world, llava):
    model, tokenizer = llava
    model.eval()
    ids = prompt_ids(tokenizer)
    images = image_batch(world, model.get_vision_tower().image_processor, ["red_square.png"])
    with torch.no_grad():
        out = model.generate(ids, images=images, do_sample=False, max_new_tokens=10, use_cache=True,
                             pad_token_id=tokenizer.pad_token_id)[0].tolist()
    reference = _greedy_without_cache(model, ids, images, 10, tokenizer.eos_token_id)
    if len(out) == len(reference) + 1 and out[0] == tokenizer.bos_token_id:  # transformers <= 4.37 prepends BOS
        out = out[1:]
    assert out == reference and len(reference) >= 2
