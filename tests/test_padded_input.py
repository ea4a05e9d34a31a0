"""PaddedInput: layer norm + projections of row groups against the same on the padded array
(float64), the multimodal adapter's groups against its padded rows, and a whole multimodal
Perceiver IO on both paths."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import perceiver.model as model_module
from perceiver import PerceiverIO, absorbed_attention, set_checkpointing
from perceiver.padded_input import PaddedInput, _var_mean
from tests.inputs.test_multimodal import make

F64 = torch.float64


def groups(features_require_grad: bool):
    """Features of widths 5 (mean 40: no cancellation allowed), 0 (the learned vector alone) and
    12 (nothing shared) in rows of width 12."""
    torch.manual_seed(0)
    pads = [nn.Parameter(torch.randn(12 - w, dtype=F64)) for w in (5, 0, 12)]
    feats = [torch.randn(2, 9, 5, dtype=F64) * 3 + 40, torch.zeros(2, 1, 0, dtype=F64),
             torch.randn(2, 4, 12, dtype=F64, requires_grad=features_require_grad)]
    return PaddedInput(tuple(zip(feats, pads, strict=True))), pads, feats


@pytest.mark.parametrize("requires_grad", [False, True])
def test_row_variance_and_mean_match_float64_across_blocks(requires_grad):
    """Data rows (mean 1e4, std 1: a one-pass sum of squares would cancel) in blocks of 4 rows,
    the last one partial; rows that need a gradient take torch.var_mean and get its gradient."""
    torch.manual_seed(0)
    f = (torch.randn(2, 9, 7) + 1e4).requires_grad_(requires_grad)
    var, mean = _var_mean(f, block_rows=4)
    want_var, want_mean = torch.var_mean(f.detach().double(), dim=-1, correction=0)
    assert var.shape == mean.shape == (2, 9)
    torch.testing.assert_close(var.double(), want_var, rtol=1e-4, atol=0)
    torch.testing.assert_close(mean.double(), want_mean, rtol=1e-7, atol=0)
    if requires_grad:
        g_var, g_mean = torch.randn(2, 9), torch.randn(2, 9)
        (grad,) = torch.autograd.grad((var * g_var).sum() + (mean * g_mean).sum(), f)
        x = f.detach().double().requires_grad_()
        want_v, want_m = torch.var_mean(x, dim=-1, correction=0)
        (want,) = torch.autograd.grad((want_v * g_var.double()).sum() + (want_m * g_mean.double()).sum(), x)
        torch.testing.assert_close(grad.double(), want, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("affine,bias", [(True, True), (False, False)])
def test_projections_match_the_padded_array_in_float64(affine, bias):
    x, pads, feats = groups(features_require_grad=True)
    norm = nn.LayerNorm(12, elementwise_affine=affine).to(F64)
    if affine:
        with torch.no_grad():
            norm.weight.normal_()
            norm.bias.normal_()
    k, v = nn.Linear(12, 7, bias=bias).to(F64), nn.Linear(12, 5, bias=bias).to(F64)
    params = [*norm.parameters(), *k.parameters(), *v.parameters(), pads[0], pads[1], feats[2]]
    weights = [torch.randn(2, 14, 7, dtype=F64), torch.randn(2, 14, 5, dtype=F64)]

    def outputs_and_grads(outs):
        loss = sum((o * w).sum() for o, w in zip(outs, weights, strict=True))
        return [o.detach() for o in outs] + list(torch.autograd.grad(loss, params))

    padded = x.materialise()
    assert padded.shape == x.shape == (2, 14, 12)
    expected = outputs_and_grads([k(norm(padded)), v(norm(padded))])
    actual = outputs_and_grads(x.normalised_projections(norm, k, v))
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_data_features_get_no_input_gradient_product():
    """The backward pass of constant features skips the [M, D] x [D, C] input-gradient matmul."""
    x, _, _ = groups(features_require_grad=False)
    big = PaddedInput(tuple((f.repeat(1, 50, 1), p) for f, p in x.groups))
    norm, k = nn.LayerNorm(12).to(F64), nn.Linear(12, 64).to(F64)

    def flops(fn):
        with FlopCounterMode(display=False) as counter:
            fn().square().sum().backward()
        return counter.get_total_flops()

    whole = flops(lambda: k(norm(big.materialise())))
    grouped = flops(lambda: big.normalised_projections(norm, k)[0])
    rows = big.shape[1] * big.shape[0]
    # whole: forward, weight gradient and input gradient, each 2 * rows * 12 * 64
    assert whole >= 3 * 2 * rows * 12 * 64
    assert grouped < 2 * 2 * rows * 12 * 64


@pytest.mark.parametrize("options,modality_mask", [
    ({}, None),
    ({}, {"label": torch.tensor([True, False])}),
    ({"mask_probs": {"label": 1.0, "audio": 0.5}}, None),
])
def test_the_adapters_groups_are_its_padded_rows(options, modality_mask):
    adapter = make(**options)
    inputs = {"image": torch.randn(2, 1, 4, 4), "audio": torch.randn(2, 32), "label": torch.tensor([1, 7])}
    torch.manual_seed(3)
    expected, _ = adapter(inputs, modality_mask=modality_mask)
    torch.manual_seed(3)
    x, _ = adapter.padded(inputs, modality_mask=modality_mask)
    assert isinstance(x, PaddedInput)
    torch.testing.assert_close(x.materialise(), expected, rtol=0, atol=0)
    if options:  # every label element masked: the label group is the mask token alone
        assert x.groups[2][0].shape[-1] == 0


def small_multimodal(adapter) -> PerceiverIO:
    """A small multimodal autoencoder over ``adapter``'s audio, image and label, whose encoder's
    cross-attention may absorb its projections (one head, 32-wide keys and values)."""
    from perceiver.outputs import ClassificationOutput, LinearOutput, MultimodalOutput
    from perceiver.queries import FourierQueries, LearnedQueries, MultimodalQueries

    config = PerceiverIO.Config(
        input=adapter.config,
        encoder=dict(num_latents=6, latent_dim=16, num_self_layers=1, num_self_heads=2, num_cross_heads=1,
                     cross_qk_dim=32, cross_v_dim=32),
        queries=MultimodalQueries.Config(modalities={
            "audio": FourierQueries.Config((4,), 3, (4,)),
            "image": FourierQueries.Config((2, 2), 2, (2, 2)),
            "label": LearnedQueries.Config(1, 8),
        }),
        decoder=dict(num_heads=1),
        output=MultimodalOutput.Config(modalities={
            "audio": LinearOutput.Config(8), "image": LinearOutput.Config(4),
            "label": ClassificationOutput.Config(10),
        }, projection_dim=8),
    )
    torch.manual_seed(0)
    return PerceiverIO(config)


@pytest.mark.parametrize("absorb,checkpointing", [(True, False), (False, False), (True, True)])
def test_a_multimodal_perceiver_io_on_both_paths(monkeypatch, absorb, checkpointing):
    """Logits and every gradient of a small multimodal autoencoder, attending to the groups
    (with the projections absorbed, or projecting the groups; every layer checkpointed or not)
    and to the padded rows (float64)."""
    monkeypatch.setattr(absorbed_attention, "MIN_PROJECTED_MACS", 0)
    calls, absorbed = [], absorbed_attention.absorbed_attention
    monkeypatch.setattr(absorbed_attention, "absorbed_attention", lambda *a: calls.append(1) or absorbed(*a))
    if not absorb:
        monkeypatch.setattr(absorbed_attention, "absorbed_pays", lambda *a: False)
    model = small_multimodal(make(mask_probs={"label": 1.0})).double()
    set_checkpointing(model, checkpointing)
    inputs = {"image": torch.randn(2, 1, 4, 4, dtype=F64), "audio": torch.randn(2, 32, dtype=F64)}

    def run():
        model.zero_grad(set_to_none=True)
        logits = model(inputs).logits
        loss = sum((v.float().double() * (i + 1)).sin().sum() for i, v in enumerate(logits.values()))
        loss.backward()
        return [v.detach() for v in logits.values()] + [p.grad for p in model.parameters()]

    grouped = run()
    in_step, _ = len(calls), calls.clear()
    model(inputs)  # a forward pass alone
    assert bool(calls) == absorb  # the absorbed path pays at these shapes
    assert (in_step > len(calls)) == checkpointing  # the encoder's, recomputed in the backward pass
    set_checkpointing(model, False)
    monkeypatch.setattr(absorbed_attention, "absorbed_pays", lambda *a: False)  # the reference projects
    monkeypatch.setattr(model_module, "_adapt", lambda a, i, m, **kw: a(i, m, **kw))
    padded = run()
    for a, e in zip(grouped, padded, strict=True):
        if e is None:
            assert a is None
            continue
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)


def test_a_streaming_cross_attention_layer_takes_it_whole():
    """A direct caller's streaming layer builds the padded rows and streams them."""
    from perceiver.layers import CrossAttentionLayer

    x, _, _ = groups(features_require_grad=False)
    torch.manual_seed(1)
    layer = CrossAttentionLayer(8, 12, chunk_size=4).double()
    q = torch.randn(2, 3, 8, dtype=F64)
    torch.testing.assert_close(layer(q, x), layer(q, x.materialise()), rtol=1e-12, atol=1e-12)


def test_torch_compile_matches_eager(monkeypatch):
    """A compiled multimodal model, its encoder absorbing the projections and its label given as
    one-hot rows, gives the eager logits (the input checks run eagerly: traced, the label's had
    raised on a valid [B, 10] tensor)."""
    monkeypatch.setattr(absorbed_attention, "MIN_PROJECTED_MACS", 0)
    model = small_multimodal(make()).eval()
    inputs = {"image": torch.randn(2, 1, 4, 4), "audio": torch.randn(2, 32), "label": torch.eye(10)[[3, 7]]}
    eager = model(inputs).logits
    compiled = torch.compile(model, backend="aot_eager")(inputs).logits
    for name, logits in eager.items():
        torch.testing.assert_close(compiled[name], logits, rtol=1e-5, atol=1e-5)
