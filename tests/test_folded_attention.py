"""Folded attention (query and output projections folded into the keys and values) against the
projected attention of the same layer in float64: outputs and every gradient, over head counts,
shared and per-example queries, norms with and without affine parameters and projections with and
without biases; a large key bias in float32; the cost rule; the dispatch in CrossAttentionLayer and
HiP's head; bf16 autocast."""

import pytest
import torch
from torch import nn

from perceiver import folded_attention as folded
from perceiver.layers import CrossAttentionLayer

F64 = torch.float64


def layer_and_inputs(heads=2, shared=False, dtype=F64, batch=3, queries=50, keys=7):
    torch.manual_seed(0)
    layer = CrossAttentionLayer(16, 24, heads, qk_dim=32, v_dim=48, widening_factor=1, query_residual=False,
                                activation="relu2").to(dtype)
    with torch.no_grad():
        for p in layer.parameters():  # every bias and norm parameter away from its initial value
            p.normal_(0, 0.5)
    x_q = torch.randn(1 if shared else batch, queries, 16, dtype=dtype, requires_grad=True)
    x_kv = torch.randn(batch, keys, 24, dtype=dtype, requires_grad=True)
    return layer, x_q, x_kv


def outputs_and_gradients(layer, x_q, x_kv, fold: bool, monkeypatch):
    """The layer's output and every gradient, with the cost rule answering ``fold``."""
    monkeypatch.setattr("perceiver.attention.folding_pays", lambda *args: fold)
    queries = x_q.expand(x_kv.shape[0], -1, -1)
    assert layer.attention.folds(x_q, x_kv) == fold
    out = layer(queries, x_kv)
    weights = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
    inputs = [x_q, x_kv, *layer.parameters()]
    return [out.detach(), *torch.autograd.grad((out * weights).sum(), inputs)]


def assert_same(actual, expected, tolerance):
    """Each gradient against the scale of its reference: the keys' bias has a gradient of 0 in exact
    arithmetic (softmax does not see a shift shared by every key), rounding in both."""
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=tolerance * max(1.0, float(e.abs().max())))


@pytest.mark.parametrize("heads,shared", [(1, False), (2, True), (4, False)])
def test_folded_layer_matches_projected_layer_in_float64(heads, shared, monkeypatch):
    layer, x_q, x_kv = layer_and_inputs(heads, shared)
    expected = outputs_and_gradients(layer, x_q, x_kv, False, monkeypatch)
    actual = outputs_and_gradients(layer, x_q, x_kv, True, monkeypatch)
    assert_same(actual, expected, 1e-12)


@pytest.mark.parametrize("affine,bias", [(False, True), (True, False), (False, False)])
def test_norm_without_affine_and_projections_without_bias(affine, bias):
    layer, x_q, x_kv = layer_and_inputs(heads=2)
    attention = layer.attention
    norm = nn.LayerNorm(16, elementwise_affine=affine).to(F64)
    if affine:
        with torch.no_grad():
            norm.weight.normal_()
            norm.bias.normal_()
    if not bias:
        attention.q_proj.bias = attention.o_proj.bias = None
    k, v = attention._heads(attention.k_proj(x_kv)), attention._heads(attention.v_proj(x_kv))
    actual = folded.folded_attention(x_q, norm, k, v, attention.q_proj, attention.o_proj)
    expected = attention._attend(norm(x_q), attention.k_proj(x_kv), attention.v_proj(x_kv), None)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_large_key_bias_keeps_float32_precision(monkeypatch):
    """The key bias rides on the keys' mean against queries that sum to 0 up to rounding: a bias
    far larger than the scores' spread must not cost float32 its precision."""
    layer, x_q, x_kv = layer_and_inputs(heads=1, dtype=torch.float32)
    with torch.no_grad():
        layer.attention.q_proj.bias.fill_(30.0)
        layer.attention.k_proj.bias.normal_(0, 30.0)
    reference = layer.to(F64)(x_q.detach().to(F64), x_kv.detach().to(F64))
    layer.float()
    monkeypatch.setattr(folded, "MIN_PROJECTED_MACS", 0)
    assert layer.attention.folds(x_q, x_kv)
    with torch.no_grad():
        out = layer(x_q, x_kv)
    error = torch.linalg.vector_norm(out.to(F64) - reference) / torch.linalg.vector_norm(reference)
    assert error < 1e-5


def test_cost_rule():
    """HiP-16's head (4,096 positions of 32 channels per group over 128 latents of 128, 16 groups)
    folds; config A's decoder (2,048 queries of 512, 8 heads) does not, nor does the head of a
    short signal (below the floor)."""
    assert folded.folding_pays(16, 4096, 128, 32, 1, 128, 128, 32)
    assert not folded.folding_pays(4, 2048, 256, 512, 8, 512, 512, 512)
    assert not folded.folding_pays(16, 256, 128, 32, 1, 128, 128, 32)


def test_no_fold_with_a_mask_dropout_or_weights(monkeypatch):
    layer, x_q, x_kv = layer_and_inputs()
    monkeypatch.setattr(folded, "MIN_PROJECTED_MACS", 0)
    mask = torch.ones(3, 7, dtype=torch.bool)
    assert layer.attention.folds(x_q, x_kv) and not layer.attention.folds(x_q, x_kv, mask)
    layer.attention.dropout = 0.1
    assert not layer.attention.folds(x_q, x_kv)
    assert layer.eval().attention.folds(x_q, x_kv)  # dropout acts only in training
    calls = []
    monkeypatch.setattr(layer.attention, "forward_folded", lambda *a: calls.append(a))
    _, weights = layer(x_q, x_kv, return_weights=True)
    assert not calls and weights.shape == (3, 2, 50, 7)


def test_hip_head_folds_and_gives_the_projected_reconstructions(monkeypatch):
    """At the real floor the head folds (2 examples x 16 groups of 512 positions)."""
    from perceiver.hip import build_hip

    torch.manual_seed(0)
    model = build_hip("mini", {"signal": (8192, 1)}).double()
    with torch.no_grad():
        for linear in model.unembed.values():
            linear.weight.normal_()
    x = torch.randn(2, 8192, 1, dtype=F64)
    calls, original = [], folded.folded_attention

    def counting(*args):
        calls.append(tuple(args[0].shape))
        return original(*args)

    monkeypatch.setattr("perceiver.attention.folded_attention", counting)
    results = []
    for fold in (True, False):
        if not fold:
            monkeypatch.setattr(folded, "MIN_PROJECTED_MACS", 2**62)
        model.zero_grad()
        out = model({"signal": x}).logits["signal"]
        out.square().sum().backward()
        results.append([out.detach(), *(p.grad.clone() for p in model.parameters())])
    # the head, and the last block's 128 latents over 4 processor latents of 1,024 channels per group
    assert calls == [(32, 128, 128), (32, 512, 32)]
    assert_same(results[0], results[1], 1e-10)


def test_bf16_autocast_is_close_to_float32(monkeypatch):
    layer, x_q, x_kv = layer_and_inputs(heads=1, dtype=torch.float32)
    with torch.no_grad():
        expected = layer(x_q, x_kv)
        monkeypatch.setattr(folded, "MIN_PROJECTED_MACS", 0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert layer.attention.folds(x_q, x_kv)
            actual = layer(x_q, x_kv).float()
    error = torch.linalg.vector_norm(actual - expected) / torch.linalg.vector_norm(expected)
    assert error < 2e-2


def test_wrong_norm_width_is_named():
    layer, x_q, x_kv = layer_and_inputs()
    attention = layer.attention
    k, v = attention._heads(attention.k_proj(x_kv)), attention._heads(attention.v_proj(x_kv))
    with pytest.raises(ValueError, match=r"q_norm: expected a LayerNorm over 16 channels, got one over \(8,"):
        folded.folded_attention(x_q, nn.LayerNorm(8).to(F64), k, v, attention.q_proj, attention.o_proj)
