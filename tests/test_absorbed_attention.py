"""Absorbed attention to a PaddedInput against projecting the padded rows and attending with SDPA
(float64): outputs and every gradient, over slicings, head counts, shared and per-example queries;
the dispatch in MultiHeadAttention.forward_padded; float32 under autocast."""

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from perceiver import absorbed_attention as absorbed
from perceiver.attention import MultiHeadAttention
from perceiver.padded_input import PaddedInput
from tests.test_folded_attention import assert_same

F64 = torch.float64


def setup(heads=2, affine=True, bias=True, batch=3, qk_dim=8, v_dim=6):
    """Groups of features 5 wide (mean 40: no cancellation allowed), 0 wide (the learned vector
    alone; one row), 12 wide (nothing shared, requiring grad) and 9 wide, in rows of width 12;
    group lengths off the 16-column alignment."""
    torch.manual_seed(0)
    widths, lengths = (5, 0, 12, 9), (11, 1, 17, 3)
    pads = [nn.Parameter(torch.randn(12 - w, dtype=F64)) for w in widths]
    feats = [torch.randn(batch, m, w, dtype=F64) for w, m in zip(widths, lengths, strict=True)]
    feats[0] = feats[0] * 3 + 40
    feats[2].requires_grad_()
    x = PaddedInput(tuple(zip(feats, pads, strict=True)))
    attention = MultiHeadAttention(16, 12, heads, qk_dim=qk_dim, v_dim=v_dim).to(F64)
    if not bias:
        for proj in (attention.q_proj, attention.k_proj, attention.v_proj):
            proj.bias = None
    norm = nn.LayerNorm(12, elementwise_affine=affine).to(F64)
    if affine:
        with torch.no_grad():
            norm.weight.normal_()
            norm.bias.normal_()
    params = [*norm.parameters(), *attention.q_proj.parameters(), *attention.k_proj.parameters(),
              *attention.v_proj.parameters(), *pads, feats[2]]
    return x, attention, norm, params


def projected(q, x, attention, norm):
    """The reference: the padded rows, normalised and projected, through SDPA."""
    rows = norm(x.materialise())
    k = rearrange(attention.k_proj(rows), "b m (h d) -> b h m d", h=q.shape[1])
    v = rearrange(attention.v_proj(rows), "b m (h d) -> b h m d", h=q.shape[1])
    return F.scaled_dot_product_attention(q.expand(k.shape[0], -1, -1, -1), k, v)


@pytest.mark.parametrize("max_scores", [None, 1, 40, 200])
@pytest.mark.parametrize("heads,shared", [(1, True), (2, True), (2, False)])
@pytest.mark.parametrize("affine,bias", [(True, True), (False, False)])
@pytest.mark.parametrize("keep_weights", [True, False])
def test_output_and_gradients_match_projected_attention_in_float64(max_scores, heads, shared, affine, bias,
                                                                   keep_weights, monkeypatch):
    """With the slices' weights kept for the backward pass, and recomputed there."""
    monkeypatch.setattr(absorbed, "KEEP_WEIGHTS_BYTES", 2**28 if keep_weights else 0)
    x, attention, norm, params = setup(heads, affine, bias)
    x_q = torch.randn(1 if shared else 3, 7, 16, dtype=F64, requires_grad=True)
    params = [*params, x_q]

    def run(fn):
        q = rearrange(attention.q_proj(x_q), "b n (h d) -> b h n d", h=heads)
        out = fn(q)
        weights = torch.randn(out.shape, dtype=F64, generator=torch.Generator().manual_seed(1))
        return [out.detach(), *torch.autograd.grad((out * weights).sum(), params, allow_unused=True)]

    expected = run(lambda q: projected(q, x, attention, norm))
    actual = run(lambda q: absorbed.absorbed_attention(q, x, norm, attention.k_proj, attention.v_proj,
                                                        max_scores))
    assert actual[0].shape == (3, heads, 7, 3 if heads == 2 else 6)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_one_slice_per_query_row_and_one_for_all_agree():
    """The slices' weights and their gradients are assembled the same whatever the slicing."""
    x, attention, norm, params = setup(heads=2)
    params = [p for p in params if all(p is not w for w in attention.q_proj.parameters())]
    q = torch.randn(3, 2, 7, 4, dtype=F64)

    def run(max_scores):
        out = absorbed.absorbed_attention(q, x, norm, attention.k_proj, attention.v_proj, max_scores)
        return [out, *torch.autograd.grad(out.sin().sum(), params)]

    for a, e in zip(run(1), run(10**9), strict=True):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


def test_forward_padded_absorbs_where_it_pays_and_not_with_a_mask(monkeypatch):
    monkeypatch.setattr(absorbed, "MIN_PROJECTED_MACS", 0)
    x, attention, norm, _ = setup(heads=1, qk_dim=32, v_dim=32)
    x_q = torch.randn(1, 7, 16, dtype=F64)
    calls, absorbed_attention = [], absorbed.absorbed_attention
    monkeypatch.setattr(absorbed, "absorbed_attention", lambda *a: calls.append(1) or absorbed_attention(*a))
    expected = attention(x_q.expand(3, -1, -1), norm(x.materialise()))
    torch.testing.assert_close(attention.forward_padded(x_q, x, norm), expected, rtol=1e-10, atol=1e-10)
    assert len(calls) == 1
    mask = torch.ones(3, x.shape[1], dtype=torch.bool)
    mask[1, 3:] = False
    torch.testing.assert_close(attention.forward_padded(x_q, x, norm, mask),
                               attention(x_q.expand(3, -1, -1), norm(x.materialise()), mask))
    assert len(calls) == 1  # masks take the projected path


def test_absorbed_pays_counts_multiply_adds(monkeypatch):
    """Kinetics' encoder (one head, 704-wide keys and values, 784 latents; video rows of 243
    features, audio rows of 401, the masked label) pays; config A's 8-head encoder would not, nor
    HiP-16's small blocks."""
    def groups(*shapes, batch=1):
        return PaddedInput(tuple((torch.zeros(batch, m, w), torch.zeros(c - w)) for m, w, c in shapes))

    kinetics = groups((1920, 401, 704), (50176, 243, 704), (1, 0, 704))
    assert absorbed.absorbed_pays(kinetics, 784, 1, 704, 704)
    assert not absorbed.absorbed_pays(groups((2048, 512, 512), batch=4), 256, 8, 512, 512)
    assert not absorbed.absorbed_pays(groups((64, 256, 256), batch=16), 128, 1, 256, 256)
    # at least half the multiply-adds saved: per row 2 H N (C + 4) against (qk + v)(C + N)
    monkeypatch.setattr(absorbed, "MIN_PROJECTED_MACS", 0)
    assert absorbed.absorbed_pays(groups((5, 10, 12)), 10, 1, 15, 14) == (2 * 2 * 10 * 14 <= 29 * 20)
    assert absorbed.absorbed_pays(groups((5, 10, 12)), 10, 1, 30, 30)
    assert not absorbed.absorbed_pays(groups((5, 10, 12)), 10, 1, 7, 7)
    monkeypatch.setattr(absorbed, "MIN_PROJECTED_MACS", 5 * 60 * 20 + 1)  # and enough of them
    assert not absorbed.absorbed_pays(groups((5, 10, 12)), 10, 1, 30, 30)


def test_under_autocast_it_runs_in_float32():
    """bf16 autocast leaves the absorbed matmuls in float32: the output is float32 and matches the
    float64 reference to float32 rounding, far tighter than bf16 would."""
    x, attention, norm, _ = setup(heads=1)
    q = torch.randn(3, 1, 7, 8, dtype=F64)
    expected = projected(q, x, attention, norm)
    x32 = x.to(torch.float32)
    attention32, norm32 = attention.float(), norm.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = absorbed.absorbed_attention(q.float(), x32, norm32, attention32.k_proj, attention32.v_proj)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)


def test_a_norm_of_the_wrong_width_is_named():
    x, attention, _, _ = setup()
    expected = r"norm: expected a LayerNorm over 12 channels, got one over \(10,\)"
    with pytest.raises(ValueError, match=expected):
        absorbed.absorbed_attention(torch.randn(3, 2, 7, 4, dtype=F64), x, nn.LayerNorm(10).to(F64),
                                    attention.k_proj, attention.v_proj)


@pytest.mark.parametrize("input_grad", [True, False])
def test_a_cross_attention_layer_absorbs_a_plain_input_where_it_pays(monkeypatch, input_grad):
    """One head, 48-wide keys and values, 5 queries over 10-channel inputs: the layer attends to
    its normalised input directly; output and every gradient (the input's too, when it needs one)
    as with the projections, and attention weights (asked for) take the projected path."""
    from perceiver.layers import CrossAttentionLayer

    monkeypatch.setattr(absorbed, "MIN_PROJECTED_MACS", 0)
    torch.manual_seed(0)
    layer = CrossAttentionLayer(16, 10, 1, qk_dim=48, v_dim=48).double()
    x_q, x_kv = torch.randn(2, 5, 16, dtype=F64), torch.randn(2, 23, 10, dtype=F64, requires_grad=input_grad)
    calls, absorbed_attention = [], absorbed.absorbed_attention
    monkeypatch.setattr(absorbed, "absorbed_attention", lambda *a: calls.append(1) or absorbed_attention(*a))
    params = [*layer.parameters(), *([x_kv] if input_grad else [])]

    def run():
        out = layer(x_q, x_kv)
        return [out, *torch.autograd.grad(out.sin().sum(), params)]

    actual = run()
    assert calls == [1]
    _, weights = layer(x_q, x_kv, return_weights=True)
    assert calls == [1] and weights.shape == (2, 1, 5, 23)
    monkeypatch.setattr(absorbed, "absorbed_pays", lambda *a: False)
    monkeypatch.setattr(absorbed, "absorbed_sdpa_pays", lambda *a: False)
    for a, e in zip(actual, run(), strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_a_bf16_model_gets_bf16_attended_values(monkeypatch):
    """Parameters in bf16 (no autocast): computed in float32, returned in the queries' dtype, so
    the output projection takes them."""
    monkeypatch.setattr(absorbed, "MIN_PROJECTED_MACS", 0)
    x, attention, norm, _ = setup(heads=1, qk_dim=32, v_dim=32)
    expected = attention(torch.ones(3, 7, 16, dtype=F64), norm(x.materialise()))
    bf16 = torch.bfloat16
    out = attention.to(bf16).forward_padded(torch.ones(1, 7, 16, dtype=bf16), x.to(bf16), norm.to(bf16))
    assert out.dtype == bf16
    torch.testing.assert_close(out.double(), expected, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("heads,shared,bias", [(1, False, True), (2, True, True), (2, False, False)])
def test_absorbed_sdpa_layer_matches_projected_layer_in_float64(monkeypatch, heads, shared, bias):
    """A plain input no wider than a head's keys and values (10 channels, heads of 24), many more
    keys than queries: the layer's output and every gradient, the input's and the queries' too,
    as with the projections (the keys' bias has a gradient of 0 in exact arithmetic: absorbed,
    exactly 0, and still in the graph, as DistributedDataParallel expects; projected, rounding)."""
    from perceiver.layers import CrossAttentionLayer

    torch.manual_seed(0)
    layer = CrossAttentionLayer(16, 10, heads, qk_dim=24 * heads, v_dim=24 * heads).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.5)
    if not bias:
        layer.attention.k_proj.bias = layer.attention.v_proj.bias = None
    x_q = torch.randn(1 if shared else 3, 6, 16, dtype=F64, requires_grad=True)
    x_kv = torch.randn(3, 40, 10, dtype=F64, requires_grad=True)
    calls, original = [], absorbed.absorbed_sdpa
    monkeypatch.setattr(absorbed, "absorbed_sdpa", lambda *a: calls.append(1) or original(*a))
    params = [x_q, x_kv, *layer.parameters()]

    def run():
        out = layer(x_q.expand(3, -1, -1), x_kv)
        weights = torch.randn(out.shape, dtype=F64, generator=torch.Generator().manual_seed(1))
        return [out.detach(), *torch.autograd.grad((out * weights).sum(), params)]

    actual = run()
    assert calls == [1]
    if bias:
        assert torch.count_nonzero(actual[3 + 7]) == 0  # attention.k_proj.bias, after out, x_q, x_kv
    monkeypatch.setattr(absorbed, "absorbed_sdpa_pays", lambda *a: False)
    expected = run()
    assert calls == [1]
    assert_same(actual, expected, 1e-12)


def test_absorbed_sdpa_pays_where_heads_are_no_narrower_and_keys_outnumber_queries(monkeypatch):
    """HiP-16's first block (128 latents per group over 4,096 tokens of 32 channels, projected to
    32) absorbs; config A's encoder (8 heads of 64 over 512 channels) and HiP's head (4,096 queries
    over 128 latents) do not."""
    assert absorbed.absorbed_sdpa_pays(128, 4096, 32, 1, 32, 32)
    assert not absorbed.absorbed_sdpa_pays(256, 2048, 512, 8, 512, 512)
    assert not absorbed.absorbed_sdpa_pays(4096, 128, 128, 1, 128, 128)
    assert absorbed.absorbed_sdpa_pays(10, 20, 16, 2, 32, 32)
    assert not absorbed.absorbed_sdpa_pays(10, 19, 16, 2, 32, 32)
    assert not absorbed.absorbed_sdpa_pays(10, 20, 16, 2, 32, 31)


def test_absorbed_sdpa_not_taken_with_a_mask_dropout_or_weights(monkeypatch):
    from perceiver.layers import CrossAttentionLayer

    layer = CrossAttentionLayer(16, 10, 1, qk_dim=24, v_dim=24).double()
    x_q, x_kv = torch.randn(3, 6, 16, dtype=F64), torch.randn(3, 40, 10, dtype=F64)
    calls = []
    monkeypatch.setattr(layer.attention, "forward_absorbed_sdpa",
                        lambda q, x: calls.append(1) or torch.zeros(3, 6, 16, dtype=F64))
    layer(x_q, x_kv, torch.ones(3, 40, dtype=torch.bool))
    layer(x_q, x_kv, return_weights=True)
    layer.attention.dropout = 0.1
    layer(x_q, x_kv)
    assert calls == []
    layer.eval()(x_q, x_kv)
    assert calls == [1]


@pytest.mark.parametrize("max_scores", [None, 40])
def test_weights_are_kept_within_the_budget_and_recomputed_beyond_it(monkeypatch, max_scores):
    """Kept: autograd holds every slice's weights, 3 examples x 2 heads x 7 queries x the groups'
    columns, each group's rounded up to 16 (11, 1, 17, 3 -> 16 + 16 + 32 + 16), in float64;
    recomputed: none of them."""
    from tests.test_layers import saved_bytes

    x, attention, norm, _ = setup(heads=2)
    q = torch.randn(3, 2, 7, 4, dtype=F64, requires_grad=True)
    sizes = {}
    for budget in (2**28, 0):
        monkeypatch.setattr(absorbed, "KEEP_WEIGHTS_BYTES", budget)
        _, sizes[budget] = saved_bytes(lambda: absorbed.absorbed_attention(q, x, norm, attention.k_proj,
                                                                           attention.v_proj, max_scores))
    assert sizes[2**28] - sizes[0] == 3 * 2 * 7 * (16 + 16 + 32 + 16) * 8
