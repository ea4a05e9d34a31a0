import copy
import weakref

import pytest
import torch

from perceiver import PerceiverIO, presets, sliced_attention
from perceiver.attention import MultiHeadAttention
from perceiver.sliced_attention import explicit_attention, explicit_attention_in_slices, explicit_pays


def test_explicit_path_is_taken_for_small_bf16_attentions_and_for_unequal_head_widths(monkeypatch):
    q, k = torch.zeros(2, 4, 16, 8), torch.zeros(2, 4, 32, 8)  # 4,096 scores
    wide_v = torch.zeros(2, 4, 32, 12)
    assert not explicit_pays(q, k, k)  # fp32, one head width: the fused kernel
    assert explicit_pays(q, k, wide_v)  # SDPA has no fused CPU kernel for it
    assert not explicit_pays(q, k, wide_v, torch.zeros(2, 4, 1, 32, requires_grad=True))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert explicit_pays(q, k, k)
        monkeypatch.setattr(sliced_attention, "EXPLICIT_BF16_MAX_SCORES", 4095)
        assert not explicit_pays(q, k, k)
        assert explicit_pays(q, k, wide_v)


# (example, head) pairs of 6 x 40 scores: whole, two examples, one example, two heads, one head
@pytest.mark.parametrize("pairs", [12, 2 * 4, 4, 2, 1, 0])
@pytest.mark.parametrize("mask_kind", [None, "keep", "bias", "bias-shared"])
@pytest.mark.parametrize("v_width", [8, 5])
def test_explicit_attention_in_slices_matches_float64_sdpa(pairs, mask_kind, v_width):
    """Slices over the batch and heads (0: a limit below one head's scores) give SDPA's outputs
    and gradients, with every kind of mask the module passes, for values as wide as the keys or
    not."""
    torch.manual_seed(pairs)
    batch, heads, n, m = 3, 4, 6, 40
    q, k, v = (torch.randn(batch, heads, length, width, dtype=torch.float64, requires_grad=True)
               for length, width in ((n, 8), (m, 8), (m, v_width)))
    keep = torch.rand(batch, 1, 1, m) > 0.3
    keep[:, ..., 0] = True
    bias = -3 * torch.rand(batch, heads if mask_kind == "bias" else 1, 1, m, dtype=torch.float64)
    mask = {None: None, "keep": keep, "bias": bias.masked_fill(~keep, float("-inf")),
            "bias-shared": bias.masked_fill(~keep, float("-inf"))}[mask_kind]
    got = explicit_attention_in_slices(q, k, v, mask, max_scores=pairs * n * m)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(got, expected)
    weights = torch.randn_like(expected)
    for g, e in zip(torch.autograd.grad((got * weights).sum(), (q, k, v)),
                    torch.autograd.grad((expected * weights).sum(), (q, k, v)), strict=True):
        torch.testing.assert_close(g, e)


def test_dropout_gradients_are_exact():
    """With attention dropout (the same draw on every call), the hand-written backward pass
    agrees with finite differences in float64, over several slices."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, length, 4, dtype=torch.float64, requires_grad=True) for length in (3, 5, 5))

    def attend(q, k, v):
        torch.manual_seed(1)
        return explicit_attention_in_slices(q, k, v, None, dropout_p=0.4, max_scores=15)

    with torch.no_grad():  # it drops
        assert float((attend(q, k, v) - explicit_attention(q, k, v, None)[0]).abs().max()) > 1e-3
    assert torch.autograd.gradcheck(attend, (q, k, v))


def test_dropout_keeps_the_expected_weights():
    """Over many draws, dropout keeps each weight with probability 1 - p and scales by 1 / (1 - p):
    the mean output is the output without dropout."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, length, 4, dtype=torch.float64) for length in (3, 6, 6))
    draws = torch.stack([explicit_attention_in_slices(q, k, v, None, dropout_p=0.25) for _ in range(4000)])
    expected = explicit_attention(q, k, v, None)[0]
    torch.testing.assert_close(draws.mean(0), expected, atol=0.05, rtol=0)


def test_bf16_matches_autograd_over_the_same_matmuls():
    """In bf16 (the path's use), outputs and gradients agree with autograd through the same
    matmuls, for queries shared by the batch (expanded, as the model passes them) and a keep-mask."""
    torch.manual_seed(0)
    q = torch.randn(1, 4, 32, 64, dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(3, 4, 48, 64, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    mask = torch.rand(3, 1, 1, 48) > 0.2
    weights = torch.randn(3, 4, 32, 64, dtype=torch.bfloat16)
    got = explicit_attention_in_slices(q.expand(3, -1, -1, -1), k, v, mask, max_scores=2 * 32 * 48)
    expected = explicit_attention(q.expand(3, -1, -1, -1), k, v, mask)[0]
    torch.testing.assert_close(got, expected, atol=1e-2, rtol=1e-2)
    for g, e in zip(torch.autograd.grad((got * weights).sum(), (q, k, v)),
                    torch.autograd.grad((expected * weights).sum(), (q, k, v)), strict=True):
        torch.testing.assert_close(g, e, atol=2e-2 * float(e.abs().max()), rtol=0)


@pytest.mark.parametrize("grad", [False, True])
def test_slice_weights_are_kept_only_for_a_backward_pass(monkeypatch, grad):
    """Without gradients each slice's weights are freed before the next slice's, so inference
    holds one slice of weights at a time, not the whole attention; with gradients all are kept."""
    softmax, weights = torch.softmax, []

    def recording(x, dim, **kwargs):
        out = softmax(x, dim, **kwargs)
        weights.append(weakref.ref(out))
        return out

    monkeypatch.setattr(torch, "softmax", recording)
    q, k, v = (torch.randn(2, 4, 6, 8, requires_grad=grad) for _ in range(3))
    store, alive = sliced_attention._store, []

    def counting_store(*args):  # after each slice: how many slices' weights are still held
        store(*args)
        alive.append(sum(ref() is not None for ref in weights))

    monkeypatch.setattr(sliced_attention, "_store", counting_store)
    with torch.set_grad_enabled(grad):
        explicit_attention_in_slices(q, k, v, None, max_scores=6 * 6)  # 8 slices of one head
    assert len(weights) == 8
    assert alive == (list(range(1, 9)) if grad else [1] * 8)


def test_a_key_bias_that_needs_a_gradient_keeps_the_fused_kernel():
    """The sliced path gives a mask no gradient, so a trainable bias goes to SDPA (and gets one);
    called directly, the sliced path refuses it."""
    q, k = torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 6, 8)
    bias = torch.zeros(1, 2, 1, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert explicit_pays(q, k, k, bias.detach())
        assert not explicit_pays(q, k, k, bias)
    with pytest.raises(ValueError, match="attention_mask"):
        explicit_attention_in_slices(q, k, k, bias)
    mha = MultiHeadAttention(8, 8, 2)
    x = torch.randn(1, 6, 8)
    slopes = torch.ones(1, 2, 1, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mha(x, x, -slopes * torch.arange(6.0))
    (grad,) = torch.autograd.grad(out.float().sum(), slopes)
    assert float(grad.abs().sum()) > 0


def _bf16_model_step(model, ids, mask, run=None):
    """Loss and every parameter's gradient of one bf16-autocast step (``run``: the model or a
    compiled copy)."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = (model if run is None else run)(inputs=ids, attention_mask=mask).logits
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids.flatten())
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_model_under_bf16_autocast_matches_float64():
    """A byte MLM whose every attention takes the sliced path (a padded batch, queries shared by the
    batch): loss and every parameter's gradient against the same model in float64."""
    torch.manual_seed(0)
    model = PerceiverIO(presets.byte_mlm(max_seq_len=48, dim=64, num_latents=16, latent_dim=64,
                                         num_layers=2, num_heads=2))
    ids = torch.randint(0, 262, (3, 48))
    mask = torch.ones(3, 48, dtype=torch.bool)
    mask[1, 30:] = False
    loss, grads = _bf16_model_step(model, ids, mask)
    reference = copy.deepcopy(model).double()
    expected = torch.nn.functional.cross_entropy(
        reference(inputs=ids, attention_mask=mask).logits.flatten(0, 1), ids.flatten())
    expected.backward()
    assert abs(float(loss) - float(expected.detach())) <= 1e-2 * float(expected.detach())
    got = torch.cat([g.double().flatten() for g in grads])
    want = torch.cat([p.grad.flatten() for p in reference.parameters()])
    assert torch.linalg.vector_norm(got - want) <= 2e-2 * torch.linalg.vector_norm(want)  # 0.7% here
    for (name, p), grad in zip(reference.named_parameters(), grads, strict=True):
        if name.endswith("k_proj.bias"):  # zero but for rounding: softmax ignores a shift of every key
            continue
        # the decoder's query-side gradients are small differences: 0.2 here (0.7 with the fused kernel)
        error = torch.linalg.vector_norm(grad.double() - p.grad) / torch.linalg.vector_norm(p.grad)
        assert error <= 0.35, (name, float(error))


def test_torch_compile_gives_the_eager_gradients():
    """Under torch.compile (the engine's ``train.compile``), which traces the sliced attention and
    its backward pass into the graph, bf16 steps give eager's loss and gradients."""
    torch.manual_seed(0)
    model = PerceiverIO(presets.byte_mlm(max_seq_len=32, dim=16, num_latents=8, latent_dim=24, num_layers=2,
                                         num_heads=2))
    ids = torch.randint(0, 262, (2, 32))
    mask = torch.ones(2, 32, dtype=torch.bool)
    mask[0, 20:] = False
    loss, grads = _bf16_model_step(model, ids, mask)
    compiled_loss, compiled_grads = _bf16_model_step(model, ids, mask, torch.compile(model))
    torch.testing.assert_close(compiled_loss, loss, atol=1e-2, rtol=1e-2)
    errors = {name: float(torch.linalg.vector_norm(c - g) / torch.linalg.vector_norm(g))
              for (name, _), g, c in zip(model.named_parameters(), grads, compiled_grads, strict=True)
              if not name.endswith("k_proj.bias")}
    assert max(errors.values()) <= 0.1, errors  # 3.3% at most here
