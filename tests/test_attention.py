import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from perceiver import sliced_attention
from perceiver.attention import MultiHeadAttention
from tests import reference

WIDTHS = [  # q_dim, kv_dim, heads, qk_dim, v_dim, out_dim
    (16, 16, 1, None, None, None),
    (32, 12, 4, 8, 20, 24),
    (24, 40, 2, 6, 10, 7),
    (8, 64, 8, 64, 8, 8),
]


@pytest.mark.parametrize("widths", WIDTHS)
@pytest.mark.parametrize("masked", [False, True])
def test_matches_float64_reference(widths, masked):
    q_dim, kv_dim, heads, qk, v, out = widths
    mha = MultiHeadAttention(q_dim, kv_dim, heads, qk, v, out).eval()
    x_q, x_kv = torch.randn(3, 5, q_dim), torch.randn(3, 11, kv_dim)
    mask = None
    if masked:
        mask = torch.ones(3, 11, dtype=torch.long)
        mask[0, 7:] = 0
        mask[2, 1:] = 0
    expected = reference.attention(mha, x_q, x_kv, mask)
    torch.testing.assert_close(mha(x_q, x_kv, mask).double(), expected, atol=1e-5, rtol=1e-5)
    got, weights = mha(x_q, x_kv, mask, return_weights=True)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)
    assert weights.shape == (3, heads, 5, 11)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, heads, 5))
    if masked:
        assert float(weights[0, :, :, 7:].detach().abs().max()) == 0.0


@pytest.mark.parametrize("heads_of_bias", [1, 4])
def test_key_bias_matches_float64_reference(heads_of_bias):
    """A float mask [B, H or 1, M] is added to each head's scores; -inf drops keys (all of them:
    zeros, as with a keep-mask); the SDPA and the explicit path agree with the reference."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 12, 4, 8, 20, 24).eval()
    x_q, x_kv = torch.randn(3, 5, 32), torch.randn(3, 11, 12)
    bias = 3 * torch.randn(3, heads_of_bias, 11)
    bias[0, :, 7:] = float("-inf")
    bias[2] = float("-inf")
    expected = reference.attention(mha, x_q, x_kv, bias=bias).detach()
    unbiased = reference.attention(mha, x_q, x_kv, mask=torch.isfinite(bias[:, 0])).detach()
    assert float((expected - unbiased).abs().max()) > 0.1  # the bias matters
    torch.testing.assert_close(mha(x_q, x_kv, bias).double(), expected, atol=1e-5, rtol=1e-5)
    got, weights = mha(x_q, x_kv, bias, return_weights=True)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)
    assert float(weights[0, :, :, 7:].detach().abs().max()) == 0.0
    assert float(got[2].detach().abs().max()) == 0.0


def test_output_width_defaults():
    mha = MultiHeadAttention(q_dim=12, kv_dim=30, num_heads=3)
    assert mha.q_proj.out_features == 12 and mha.v_proj.out_features == 12
    assert mha(torch.randn(2, 4, 12), torch.randn(2, 9, 30)).shape == (2, 4, 12)


def test_all_masked_rows_give_zeros_and_finite_gradients():
    mha = MultiHeadAttention(8, 8, 2)
    x_q = torch.randn(2, 3, 8, requires_grad=True)
    x_kv = torch.randn(2, 5, 8, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    out = mha(x_q, x_kv, mask)
    assert torch.isfinite(out).all()
    assert float(out[1].detach().abs().max()) == 0.0 and float(out[0].detach().abs().max()) > 0
    out.sum().backward()
    assert torch.isfinite(x_q.grad).all() and torch.isfinite(x_kv.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in mha.parameters())
    _, weights = mha(x_q, x_kv, mask, return_weights=True)
    assert float(weights[1].detach().abs().max()) == 0.0


@pytest.mark.parametrize("path", ["explicit", "explicit-per-head", "fused"])
def test_bf16_autocast_matches_float64_reference(monkeypatch, path):
    """Every bf16 path (explicit matmuls, whole or one head at a time; the fused kernel for large
    attentions), with a padded and an empty example: outputs and input gradients against float64."""
    if path == "fused":
        monkeypatch.setattr(sliced_attention, "EXPLICIT_BF16_MAX_SCORES", 0)
    if path == "explicit-per-head":
        monkeypatch.setattr(sliced_attention, "SLICE_SCORES", 6 * 40)
    sdpa, fused_calls = torch.nn.functional.scaled_dot_product_attention, []

    def counting_sdpa(*args, **kwargs):
        fused_calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
    torch.manual_seed(0)
    # values as wide as the keys (8 a head), since wider or narrower ones never take the fused kernel
    mha = MultiHeadAttention(32, 24, 4, 32, 32).eval()
    x_q, x_kv = torch.randn(3, 6, 32, requires_grad=True), torch.randn(3, 40, 24, requires_grad=True)
    mask = torch.ones(3, 40, dtype=torch.bool)
    mask[1, 25:] = False
    mask[2] = False
    expected = reference.attention(mha, x_q, x_kv, mask)
    (expected_q, expected_kv) = torch.autograd.grad(expected.sum(), (x_q, x_kv))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = mha(x_q, x_kv, mask)
    assert len(fused_calls) == (1 if path == "fused" else 0)
    got_q, got_kv = torch.autograd.grad(got.float().sum(), (x_q, x_kv))
    scale = float(expected.detach().abs().max())
    torch.testing.assert_close(got.double(), expected, atol=2e-2 * scale, rtol=0)
    assert float(got[2].detach().abs().max()) == 0.0
    for grad, reference_grad in ((got_q, expected_q), (got_kv, expected_kv)):
        atol = 3e-2 * float(reference_grad.abs().max())
        torch.testing.assert_close(grad.double(), reference_grad.double(), atol=atol, rtol=0)
    assert float(got_kv[1, 25:].abs().max()) == 0.0


@given(
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    extra=st.integers(0, 5),
    heads=st.sampled_from([1, 2, 4]),
)
def test_padding_never_changes_unpadded_outputs(lengths, extra, heads):
    torch.manual_seed(len(lengths) * 31 + extra)
    mha = MultiHeadAttention(8, 6, heads, 8, 12).eval()
    longest = max(lengths) + extra
    x_q = torch.randn(len(lengths), 4, 8)
    x_kv = torch.randn(len(lengths), longest, 6) * 100  # padding holds large garbage
    mask = torch.zeros(len(lengths), longest, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    padded = mha(x_q, x_kv, mask)
    for i, n in enumerate(lengths):
        alone = mha(x_q[i:i + 1], x_kv[i:i + 1, :n])
        torch.testing.assert_close(padded[i:i + 1], alone, atol=1e-4, rtol=1e-4)


def test_dropout_only_in_training():
    mha = MultiHeadAttention(8, 8, 2, dropout=0.5)
    x = torch.randn(2, 6, 8)
    mha.eval()
    torch.testing.assert_close(mha(x, x), mha(x, x))
    mha.train()
    assert not torch.allclose(mha(x, x), mha.eval()(x, x))


@pytest.mark.parametrize("mask, message", [
    (torch.ones(2, 4), r"attention_mask: expected shape \[2, 5\].*got \[2, 4\]"),
    (torch.full((2, 5), 0.5), "attention_mask: expected values 0 .* or 1"),
    ([[1] * 5] * 2, "attention_mask: expected a tensor"),
    (torch.zeros(2, 3, 5), r"attention_mask: expected a key bias of shape \[2, 2 or 1, 5\].*got \[2, 3, 5\]"),
    (torch.ones(2, 2, 5, dtype=torch.long), "attention_mask: expected a floating-point key bias"),
    (torch.tensor([0.0, float("nan")]).repeat(2, 2, 3)[..., :5],
     "attention_mask: expected finite key biases"),
    (torch.tensor([[[0.0, float("-inf"), 0, 0, 0], [0.0] * 5]] * 2),
     "attention_mask: expected -inf on the same keys in every head"),
])
def test_bad_mask_raises(mask, message):
    mha = MultiHeadAttention(8, 8, 2)
    with pytest.raises(ValueError, match=message):
        mha(torch.randn(2, 3, 8), torch.randn(2, 5, 8), mask)


def test_heads_must_divide_widths():
    with pytest.raises(ValueError, match="qk_dim: expected a multiple of num_heads=3, got 8"):
        MultiHeadAttention(8, 8, 3)


@pytest.mark.parametrize("dtype", [torch.long, torch.int32, torch.uint8, torch.float32])
def test_masks_other_than_0_and_1_are_refused_and_0_1_of_any_dtype_equal_booleans(dtype):
    mha = MultiHeadAttention(16, 16, 2).eval()
    x_q, x_kv = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    keep = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 1, 1, 1]], dtype=torch.bool)
    torch.testing.assert_close(mha(x_q, x_kv, keep.to(dtype)), mha(x_q, x_kv, keep), atol=0, rtol=0)
    for value in ([7] if dtype == torch.uint8 else [-1, 2, 7]):
        bad = keep.to(dtype).clone()
        bad[1, 2] = value
        with pytest.raises(ValueError, match=rf"attention_mask: expected values 0 \(pad\) or 1 \(keep\) or "
                                             rf"booleans, got 1 other value\(s\), first {value}"):
            mha(x_q, x_kv, bad)
