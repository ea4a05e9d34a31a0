import pytest
import torch

from perceiver.layers import MLP, CrossAttentionLayer, SelfAttentionLayer, SelfAttentionStack, checkpointed
from tests import reference


@pytest.mark.parametrize("query_residual", [True, False])
def test_cross_attention_layer_matches_reference(query_residual):
    layer = CrossAttentionLayer(16, 10, num_heads=2, qk_dim=8, v_dim=12, widening_factor=3,
                                query_residual=query_residual).eval()
    for p in layer.parameters():  # non-trivial LayerNorm affine parameters
        torch.nn.init.normal_(p, std=0.3)
    x_q, x_kv = torch.randn(2, 4, 16), torch.randn(2, 9, 10)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    expected = reference.cross_attention_layer(layer, x_q, x_kv, mask)
    torch.testing.assert_close(layer(x_q, x_kv, mask).double(), expected, atol=1e-5, rtol=1e-5)
    assert layer.mlp.fc1.out_features == 48


def test_self_attention_layer_matches_reference():
    layer = SelfAttentionLayer(16, num_heads=4, qk_dim=8, widening_factor=2).eval()
    x = torch.randn(2, 6, 16)
    torch.testing.assert_close(layer(x).double(), reference.self_attention_layer(layer, x),
                               atol=1e-5, rtol=1e-5)


def test_mlp_tanh_gelu_differs_from_exact():
    exact, approx = MLP(8, 2, "gelu"), MLP(8, 2, "gelu_tanh")
    approx.load_state_dict(exact.state_dict())
    x = torch.randn(4, 8)
    torch.testing.assert_close(exact(x), approx(x), atol=1e-2, rtol=1e-2)
    assert not torch.equal(exact(x), approx(x))
    with pytest.raises(ValueError, match="activation: expected one of"):
        MLP(8, 1, "relu6")


def test_checkpointing_gives_identical_gradients():
    plain = SelfAttentionStack(3, 16, num_heads=4, dropout=0.1).train()
    ckpt = SelfAttentionStack(3, 16, checkpointing=True, num_heads=4, dropout=0.1).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 5, 16)
    grads = []
    for model in (plain, ckpt):
        torch.manual_seed(7)  # same dropout masks; checkpointing replays the RNG state
        xi = x.clone().requires_grad_()
        model(xi).square().sum().backward()
        grads.append([xi.grad] + [p.grad for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def saved_bytes(fn):
    """``fn()`` and the bytes of the tensors autograd keeps for its backward pass (unique storages,
    parameters included)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        return fn(), sum(storages.values())


def test_a_checkpointed_layer_keeps_its_inputs_only_and_gives_identical_gradients():
    layer = CrossAttentionLayer(16, 10, num_heads=2, widening_factor=2, dropout=0.1).train()
    x_q, x_kv = torch.randn(2, 4, 16), torch.randn(2, 64, 10)
    mask = torch.ones(2, 64, dtype=torch.bool)
    mask[1, 40:] = False
    runs = []
    for enabled in (False, True):
        torch.manual_seed(7)  # same dropout masks; checkpointing replays the RNG state
        q, kv = x_q.clone().requires_grad_(), x_kv.clone().requires_grad_()
        out, saved = saved_bytes(lambda: checkpointed(layer, q, kv, mask, enabled=enabled))  # noqa: B023
        layer.zero_grad()
        out.square().sum().backward()
        runs.append((saved, [out, q.grad, kv.grad] + [p.grad.clone() for p in layer.parameters()]))
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    inputs = sum(t.untyped_storage().nbytes() for t in (x_q, x_kv, mask))
    assert runs[1][0] == inputs < runs[0][0] / 5
    layer.eval()  # not outside training
    assert saved_bytes(lambda: checkpointed(layer, x_q.requires_grad_(), x_kv, mask, enabled=True))[1] \
        > 5 * inputs


def test_stack_returns_one_weight_map_per_layer():
    stack = SelfAttentionStack(2, 8, num_heads=2)
    out, weights = stack(torch.randn(3, 4, 8), return_weights=True)
    assert out.shape == (3, 4, 8) and [w.shape for w in weights] == [(3, 2, 4, 4)] * 2


def test_squared_relu_and_drop_path_follow_their_definitions():
    from perceiver.layers import SquaredReLU, drop_path

    x = torch.linspace(-2, 2, 9, dtype=torch.float64)
    torch.testing.assert_close(SquaredReLU()(x), torch.where(x > 0, x * x, torch.zeros_like(x)))
    y = torch.ones(4000, 3, 2)
    torch.manual_seed(0)
    dropped = drop_path(y, 0.25, training=True)
    per_example = dropped.flatten(1)
    assert set(per_example.unique().tolist()) == {0.0, 1.0}  # whole examples, no rescaling
    assert (per_example.min(1).values == per_example.max(1).values).all()
    assert 0.22 < 1 - per_example[:, 0].mean() < 0.28
    assert torch.equal(drop_path(y, 0.25, training=False), y)


def test_residual_dropout_and_drop_path_are_identities_in_eval():
    from perceiver.layers import SelfAttentionLayer

    torch.manual_seed(0)
    plain = SelfAttentionLayer(16, 2, activation="relu2").eval()
    noisy = SelfAttentionLayer(16, 2, activation="relu2", residual_dropout=0.5, drop_path=0.5).eval()
    noisy.load_state_dict(plain.state_dict())
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(noisy(x), plain(x))
    noisy.train()
    assert not torch.allclose(noisy(x), plain(x))


def test_shared_queries_projected_once_same_result():
    """Queries every example shares (an expanded view, as learned latents and output queries are)
    take the project-once path; outputs and gradients equal those of the materialised queries."""
    torch.manual_seed(0)
    layer = CrossAttentionLayer(16, 8, num_heads=2).double()
    table = torch.randn(5, 16, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 7, 8, dtype=torch.float64)
    shared = table.expand(3, -1, -1)
    assert shared.stride(0) == 0
    out = layer(shared, x)
    ref = layer(shared.contiguous(), x)
    g = torch.randn_like(ref)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(torch.autograd.grad(out, table, g)[0], torch.autograd.grad(ref, table, g)[0])
