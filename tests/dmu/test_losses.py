import math
import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from clipmoe_encoder.dmu.losses import contrastive_loss, smoothed_cross_entropy
from clipmoe_encoder.moe import aux_losses, load_balancing_loss, router_z_loss, routing_stats, summed_over_processes

from . import dist_workers


def _ce_by_hand(logits, target, eps):
    """-log softmax for a row of two logits, smoothed: (1-eps) * nll(target) + eps * mean of both nll."""
    lse = math.log(math.exp(logits[0]) + math.exp(logits[1]))
    nll = [lse - logits[0], lse - logits[1]]
    return (1 - eps) * nll[target] + eps * (nll[0] + nll[1]) / 2


def test_infonce_with_label_smoothing_matches_hand_computation_2x2():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # image->text logits 10 * I T^T = [[10, 6], [0, 8]]; text->image = [[10, 0], [6, 8]]
    i2t = _ce_by_hand([10, 6], 0, 0.1) + _ce_by_hand([0, 8], 1, 0.1)
    t2i = _ce_by_hand([10, 0], 0, 0.1) + _ce_by_hand([6, 8], 1, 0.1)
    expected = (i2t / 2 + t2i / 2) / 2
    loss, logged = contrastive_loss(image, text, 10.0, label_smoothing=0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert logged.item() == pytest.approx(expected, rel=1e-6)


def test_smoothed_ce_equals_torch_and_masking_removes_a_sample():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 5, generator=g) * 3
    targets = torch.arange(5)
    ours = smoothed_cross_entropy(logits, targets, 0.1, torch.ones(5, dtype=torch.bool)).mean()
    assert ours.item() == pytest.approx(F.cross_entropy(logits, targets, label_smoothing=0.1).item(), rel=1e-6)
    # masking sample 4 out of a batch of 5 = the loss of the batch of the first 4
    image = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    text = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    valid = torch.tensor([True, True, True, True, False])
    masked, _ = contrastive_loss(image, text, 10.0, 0.1, valid)
    four, _ = contrastive_loss(image[:4], text[:4], 10.0, 0.1)
    assert masked.item() == pytest.approx(four.item(), rel=1e-6)


def test_aux_losses_average_the_layers_with_the_configs_coefficients_and_count():
    g = torch.Generator().manual_seed(1)
    layers = tuple(torch.randn(12, 4, generator=g) for _ in range(3))
    mask = torch.tensor([1] * 9 + [0] * 3)
    stats = [routing_stats(layers[0], 2), routing_stats(layers[1], 2), routing_stats(layers[2], 2, mask)]
    config = dist_workers.AUX_CONFIG
    aux, lb, z = aux_losses(stats, config)
    ref_lb = sum(load_balancing_loss(s, "top_k") for s in stats) / 3
    ref_z = sum(router_z_loss(s) for s in stats) / 3
    assert lb.item() == pytest.approx(ref_lb.item(), rel=1e-6) and z.item() == pytest.approx(ref_z.item(), rel=1e-6)
    assert aux.item() == pytest.approx(0.01 * ref_lb.item() + 0.001 * ref_z.item(), rel=1e-6)
    assert summed_over_processes(stats) == stats  # no process group: the local statistics


def test_two_gloo_processes_give_the_one_process_loss_and_gradient(tmp_path):
    g = torch.Generator().manual_seed(2)
    inputs = {
        "image": F.normalize(torch.randn(6, 8, generator=g), dim=-1),
        "text": F.normalize(torch.randn(6, 8, generator=g), dim=-1),
        "valid": torch.tensor([True, True, False, True, True, True]),
        "router": torch.randn(10, 4, generator=g),
    }
    mp.spawn(dist_workers.loss_worker, args=(2, str(tmp_path / "init"), inputs, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(os.path.join(tmp_path, f"rank{r}.pt"), weights_only=True) for r in range(2)]

    image = inputs["image"].clone().requires_grad_(True)
    text = inputs["text"].clone().requires_grad_(True)
    loss, _ = contrastive_loss(image, text, 20.0, 0.1, inputs["valid"])
    loss.backward()
    # what DDP optimises: the mean over ranks of the rank losses; gradients also averaged
    assert ((ranks[0]["loss"] + ranks[1]["loss"]) / 2).item() == pytest.approx(loss.item(), rel=1e-5)
    assert ranks[0]["logged"].item() == pytest.approx(loss.item(), rel=1e-5)
    dist_image_grad = torch.cat([ranks[0]["image_grad"], ranks[1]["image_grad"]]) / 2
    dist_text_grad = torch.cat([ranks[0]["text_grad"], ranks[1]["text_grad"]]) / 2
    assert torch.allclose(dist_image_grad, image.grad, atol=1e-6)
    assert torch.allclose(dist_text_grad, text.grad, atol=1e-6)

    router = inputs["router"].clone().requires_grad_(True)
    aux, _, _ = aux_losses(summed_over_processes([routing_stats(router, 2)]), dist_workers.AUX_CONFIG)
    aux.backward()
    assert ranks[0]["aux"].item() == pytest.approx(aux.item(), rel=1e-5)
    assert torch.allclose(torch.cat([ranks[0]["router_grad"], ranks[1]["router_grad"]]) / 2, router.grad, atol=1e-7)
