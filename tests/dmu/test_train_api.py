"""train_contrastive (the demo trains its base with it), --skip-bad during training, prepare-base."""

import json

import pytest
import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from clipmoe_encoder import CLIPMoEError
from clipmoe_encoder.dmu.base import prepare_base
from clipmoe_encoder.dmu.models import load_model, load_preprocessors
from clipmoe_encoder.dmu.trainer import train_contrastive

from .helpers import make_base, make_pairs, make_tokenizer, write_sharegpt


def test_train_from_a_model_object_and_skip_a_corrupt_image(tmp_path):
    base = make_base(str(tmp_path / "base"))
    pairs = make_pairs(str(tmp_path / "data"), 8)
    (tmp_path / "data" / "images" / "003.png").write_bytes(b"\x89PNG broken")
    data = write_sharegpt(str(tmp_path / "data"), pairs)
    tok, proc = load_preprocessors(base)
    fresh = load_model(base)
    with pytest.raises(CLIPMoEError, match=r"003.png: cannot decode image"):
        train_contrastive(fresh, data, str(tmp_path / "strict"), batch_size=4, tokenizer=tok, image_processor=proc)
    out = train_contrastive(load_model(base), data, str(tmp_path / "skip"), trainable="all", epochs=2, batch_size=4, lr=1e-3,
                            logit_scale=None, tokenizer=tok, image_processor=proc, skip_bad=True)
    assert out == str(tmp_path / "skip" / "train" / "model")
    with open(tmp_path / "skip" / "train" / "done.json") as f:
        done = json.load(f)
    assert done["invalid_samples"] == 2 and done["steps"] == 4  # the bad image was met once per epoch
    with open(tmp_path / "skip" / "train" / "log.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 4 and all(r["loss"] > 0 for r in rows)
    trained, start = load_model(out), load_model(base)
    assert trained.logit_scale.item() != pytest.approx(start.logit_scale.item())  # logit_scale=None trains it
    assert train_contrastive(base, data, str(tmp_path / "skip"), skip_bad=True) == out  # finished: returns at once


def test_batch_groups_draw_every_batch_from_one_group(tmp_path):
    base = make_base(str(tmp_path / "base"))
    data = write_sharegpt(str(tmp_path / "data"), make_pairs(str(tmp_path / "data"), 12))
    groups = [0, 1, 2] * 4  # 4 records a group: batches of 4 hold one group each
    train_contrastive(base, data, str(tmp_path / "out"), batch_size=4, batch_groups=groups)
    with open(tmp_path / "out" / "train" / "done.json") as f:
        sampler = json.load(f)["sampler"]
    assert sampler["clusters"] == 3 and sampler["cluster_batches"] == 3 and sampler["mixed_batches"] == 0
    with pytest.raises(CLIPMoEError, match="batch_groups has 11 entries for 12 records"):
        train_contrastive(base, data, str(tmp_path / "short"), batch_size=4, batch_groups=groups[:11])


def test_prepare_base_stretches_text_positions_to_248(tmp_path):
    src = str(tmp_path / "b77")
    tok = make_tokenizer(src)
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": len(tok),
                "max_position_embeddings": 77, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 16, "patch_size": 8}
    dense = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    dense.save_pretrained(src)
    tok.save_pretrained(src)
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(src)
    out = prepare_base(src, str(tmp_path / "b248"), 248)
    model = load_model(out)
    table = model.text_model.embeddings.position_embedding.weight
    old = dense.text_model.embeddings.position_embedding.weight
    assert table.shape[0] == 248 and load_preprocessors(out)[0].model_max_length == 248
    assert torch.equal(table[:20], old[:20]) and torch.allclose(table[20 + 4], old[21])  # kept, then 4x interpolated
    with pytest.raises(CLIPMoEError, match="only Long-CLIP"):
        prepare_base(src, str(tmp_path / "bad"), 100)


def test_trainable_selection_last_k_blocks_and_vision_only(tmp_path):
    from clipmoe_encoder import upcycle
    from clipmoe_encoder.dmu.models import select_trainable
    from clipmoe_encoder.dmu.pipeline import DMUSettings, _moe_layout

    base = load_model(make_base(str(tmp_path / "base")))
    names = [n for n, _ in select_trainable(base, "ffn", "both", last_k_blocks=1)]
    assert sorted({n.split(".mlp.")[0] for n in names}) == ["text_model.encoder.layers.1", "vision_model.encoder.layers.1"]
    assert len(names) == 8 and all(p.requires_grad == (n in names) for n, p in base.named_parameters())
    names = [n for n, _ in select_trainable(base, "ffn", "vision")]
    assert len(names) == 8 and all(n.startswith("vision_model.") for n in names)
    vision, text = _moe_layout(DMUSettings(last_k_blocks=1), base)
    moe = upcycle(base, 3, 2, vision, text_moe_layers=text)
    assert moe.config.vision_config.moe_layer_indices == [1] and moe.config.text_config.moe_layer_indices == [1]
    routers = [n for n, _ in select_trainable(moe, "router")]
    assert routers == ["text_model.encoder.layers.1.mlp.router.weight", "vision_model.encoder.layers.1.mlp.router.weight"]
    assert _moe_layout(DMUSettings(mcl_towers="vision"), base) == (None, [])
    with pytest.raises(CLIPMoEError, match="selects no parameter"):
        select_trainable(base, "router")


def test_gradient_checkpointing_gives_the_same_training(tmp_path, monkeypatch):
    import torch.utils.checkpoint
    import transformers.modeling_utils

    from clipmoe_encoder.dmu.data import ImageTextDataset, load_records
    from clipmoe_encoder.dmu.distributed import make_accelerator
    from clipmoe_encoder.dmu.settings import StageSpec
    from clipmoe_encoder.dmu.trainer import train_stage

    # Count checkpointed calls, so the test fails if checkpointing never turns on. transformers
    # binds torch's `checkpoint` at import, so its name is patched as well as torch's.
    calls, real = [], torch.utils.checkpoint.checkpoint

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", spy)
    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", spy, raising=False)
    base = make_base(str(tmp_path / "base"))
    data = write_sharegpt(str(tmp_path / "data"), make_pairs(str(tmp_path / "data"), 8))
    tok, proc = load_preprocessors(base)
    dataset = ImageTextDataset(load_records(data)[0], proc, tok, 16)
    results, checkpointed = [], []
    for ckpt in (False, True):
        spec = StageSpec(stage_name=f"gc{ckpt}", trainable="ffn", epochs=1, batch_size=4, lr=1e-3, warmup_steps=0, grad_checkpointing=ckpt)
        calls.clear()
        model = train_stage(make_accelerator("no"), load_model(base), dataset, spec, str(tmp_path / f"gc{ckpt}"))["model"]
        results.append(model.state_dict())
        checkpointed.append(len(calls))
    assert checkpointed[0] == 0 and checkpointed[1] > 0, checkpointed
    start = load_model(base).state_dict()
    key = "vision_model.encoder.layers.0.mlp.fc1.weight"
    assert not torch.equal(results[0][key], start[key])
    assert all(torch.allclose(results[0][k], results[1][k], atol=1e-6) for k in start)


def test_dmu_train_flags_are_the_stage_spec_fields(capsys):
    import dataclasses

    from clipmoe_encoder.cli import build_parser
    from clipmoe_encoder.dmu.cli import _from_flags
    from clipmoe_encoder.dmu.settings import StageSpec

    required = ["dmu", "train", "--model", "m", "--data", "d", "--out", "o"]
    parser = build_parser()
    assert _from_flags(StageSpec, parser.parse_args(required)) == StageSpec()
    args = parser.parse_args(required + ["--trainable", "router", "--batch-size", "4", "--lr-router", "1e-3", "--log-every", "3",
                                         "--no-aux-loss", "--logit-scale", "none", "--last-k-blocks", "2", "--stage-name", "r"])
    spec = _from_flags(StageSpec, args)
    assert spec == StageSpec(stage_name="r", trainable="router", batch_size=4, lr_router=1e-3, log_every=3, aux_loss=False,
                             logit_scale=None, last_k_blocks=2)
    with pytest.raises(SystemExit):
        parser.parse_args(["dmu", "train", "--help"])
    help_text = capsys.readouterr().out
    for field in dataclasses.fields(StageSpec):
        assert "--" + field.name.replace("_", "-") in help_text


@pytest.mark.parametrize("fields,message", [({"trainable": "routers"}, "trainable must be one of"),
                                            ({"batch_size": 1}, "batch_size must be at least 2"),
                                            ({"log_every": 0}, "log_every must be positive")])
def test_a_bad_stage_setting_is_refused_before_anything_loads(tmp_path, fields, message):
    from clipmoe_encoder.cli import main

    # the model directory does not exist: the setting must be checked first
    with pytest.raises(CLIPMoEError, match=message):
        train_contrastive(str(tmp_path / "missing"), str(tmp_path / "missing.json"), str(tmp_path / "out"), **fields)
    flag, value = next(iter(fields.items()))
    argv = ["dmu", "train", "--model", str(tmp_path / "missing"), "--data", "d", "--out", str(tmp_path / "out"),
            "--" + flag.replace("_", "-"), str(value)]
    assert main(argv) == 2 and not (tmp_path / "out").exists()
    with pytest.raises(TypeError):
        train_contrastive(str(tmp_path / "missing"), "d", str(tmp_path / "out"), global_batch=4)  # not a StageSpec field
