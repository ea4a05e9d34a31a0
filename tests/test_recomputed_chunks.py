import pytest
import torch

from perceiver.layers import CrossAttentionLayer, attend_in_chunks
from perceiver.recomputed_chunks import recomputed_chunks
from tests.test_layers import saved_bytes


def gradients(layer, fn, queries, x_kv):
    """``fn(queries, x_kv)``, and the gradients of a fixed function of it: queries, x_kv, parameters."""
    queries, x_kv = queries.detach().requires_grad_(), x_kv.detach().requires_grad_()
    out = fn(queries, x_kv)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * weights).sum().backward()
    grads = [queries.grad, x_kv.grad, *(p.grad for p in layer.parameters())]
    layer.zero_grad(set_to_none=True)
    return out.detach(), grads


@pytest.mark.parametrize("shared", [False, True])  # shared: the learned output queries, expanded
def test_recomputed_chunks_give_the_whole_layers_outputs_and_gradients_in_float64(shared):
    torch.manual_seed(0)
    layer = CrossAttentionLayer(12, 10, num_heads=2, qk_dim=8, v_dim=6, widening_factor=2).double().train()
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.3)
    queries = torch.randn(1 if shared else 3, 23, 12, dtype=torch.float64).expand(3, -1, -1)
    x_kv = torch.randn(3, 9, 10, dtype=torch.float64)
    whole = gradients(layer, layer, queries, x_kv)
    chunked = gradients(layer, lambda q, kv: recomputed_chunks(layer, q, kv, 5), queries, x_kv)  # 5 x 4 + 3
    torch.testing.assert_close(chunked[0], whole[0], atol=1e-12, rtol=1e-12)
    for got, expected in zip(chunked[1], whole[1], strict=True):
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)


def test_dropout_is_replayed_and_the_gradients_are_those_of_the_plain_chunks():
    layer = CrossAttentionLayer(16, 10, num_heads=2, widening_factor=2, dropout=0.3).train()
    queries, x_kv = torch.randn(2, 40, 16), torch.randn(2, 7, 10)
    runs, after = [], []
    for checkpointing in (False, True):
        torch.manual_seed(3)
        runs.append(gradients(layer, lambda q, kv: attend_in_chunks(layer, q, kv, 16, checkpointing),  # noqa: B023
                              queries, x_kv))
        after.append(torch.rand(()))  # the random numbers after the step: the same
    (plain, recomputed) = runs
    assert torch.equal(after[0], after[1])
    assert torch.equal(plain[0], recomputed[0])
    for got, expected in zip(recomputed[1], plain[1], strict=True):  # the chunks summed in one order
        assert torch.equal(got, expected)
    torch.manual_seed(3)  # not the masks of one whole call: dropout does act
    assert not torch.equal(layer(queries, x_kv), plain[0])


def test_the_backward_pass_recomputes_under_the_autocast_of_the_forward_pass():
    layer = CrossAttentionLayer(16, 10, num_heads=2).train()
    queries, x_kv = torch.randn(2, 40, 16), torch.randn(2, 7, 10)
    dtypes = []
    layer.mlp.fc1.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    runs = []
    for checkpointing in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            runs.append(gradients(layer, lambda q, kv: attend_in_chunks(layer, q, kv, 16, checkpointing),  # noqa: B023
                                  queries, x_kv))
    assert dtypes == [torch.bfloat16] * 9  # 3 plain chunks, 3 chunks forward, 3 recomputed
    assert runs[1][0].dtype == runs[0][0].dtype and torch.equal(runs[1][0], runs[0][0])
    # plain chunks share autocast's bf16 copy of each weight, so their weight gradients are summed
    # in bf16; recomputed chunks cast the weights afresh and sum the gradients in fp32
    for got, expected in zip(runs[1][1], runs[0][1], strict=True):
        assert got.dtype == expected.dtype == torch.float32
        torch.testing.assert_close(got, expected, atol=5e-2 * float(expected.abs().max()), rtol=0)


def test_only_the_inputs_and_parameters_are_kept_and_not_without_gradients():
    layer = CrossAttentionLayer(16, 10, num_heads=2).train()
    queries, x_kv = torch.randn(2, 64, 16, requires_grad=True), torch.randn(2, 7, 10, requires_grad=True)
    _, plain = saved_bytes(lambda: attend_in_chunks(layer, queries, x_kv, 16, False))
    _, kept = saved_bytes(lambda: attend_in_chunks(layer, queries, x_kv, 16, True))
    weights = sum(p.untyped_storage().nbytes() for p in layer.parameters())
    assert kept == queries.untyped_storage().nbytes() + x_kv.untyped_storage().nbytes() + weights
    assert kept - weights < (plain - weights) / 4
    with torch.no_grad():  # and in eval mode or without gradients, plain chunks (nothing kept)
        torch.testing.assert_close(attend_in_chunks(layer, queries, x_kv, 16, True), layer(queries, x_kv))


def test_a_layer_sharded_by_fsdp2_is_checkpointed_chunk_by_chunk_with_its_gradients(tmp_path):
    """FSDP2 gathers a sharded layer's weights in hooks around each call; the recomputing Function
    would take the gradients of weights its backward pass never sees (they stay None)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    plain, sharded = (CrossAttentionLayer(16, 10, num_heads=2).train() for _ in range(2))
    sharded.load_state_dict(plain.state_dict())
    queries, x_kv = torch.randn(2, 40, 16), torch.randn(2, 7, 10)
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        fully_shard(sharded.train())
        whole = gradients(plain, plain, queries, x_kv)
        chunked = gradients(sharded, lambda q, kv: attend_in_chunks(sharded, q, kv, 16, True), queries, x_kv)
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(chunked[0], whole[0])
    for got, expected in zip(chunked[1], whole[1], strict=True):
        assert got is not None
        torch.testing.assert_close(got.full_tensor() if hasattr(got, "full_tensor") else got, expected)
