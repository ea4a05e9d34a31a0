"""Streamed (chunked) cross-attention equals attention over the whole input, in float64: outputs
and the gradients of queries, input and every weight; both chunk kernels; masks; autocast."""

import pytest
import torch

from perceiver import PerceiverIO, presets
from perceiver.inputs import TokenInputAdapter
from perceiver.layers import CrossAttentionLayer
from perceiver.streamed_attention import ChunkedInput, streamed_attention
from perceiver.tokenizer import encode


def _grads(layer, z, x, mask, g):
    out = layer(z, x, mask)
    return out, torch.autograd.grad(out, [z, x, *layer.parameters()], g)


@pytest.mark.parametrize("v_dim", [24, 20])  # equal head widths use the CPU flash kernel
@pytest.mark.parametrize("masked", [False, True, "key bias"])
def test_layer_matches_unchunked(v_dim, masked):
    torch.manual_seed(0)
    layer = CrossAttentionLayer(32, 16, 4, 24, v_dim).double()
    for p in layer.parameters():  # LayerNorm weights away from 1 and 0 so that their gradients count
        torch.nn.init.normal_(p, std=0.5)
    z = torch.randn(3, 8, 32, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 100, 16, dtype=torch.float64, requires_grad=True)
    mask = None
    if masked:
        mask = torch.rand(3, 100) > 0.3
        mask[1] = False  # no key at all: zeros, as without chunks
        mask[2, :40] = False  # the first chunks of an example entirely masked
    if masked == "key bias":  # per head, -inf where the mask drops keys
        mask = (2 * torch.randn(3, 4, 100, dtype=torch.float64)).masked_fill(~mask[:, None], float("-inf"))
    g = torch.randn(3, 8, 32, dtype=torch.float64)
    ref, ref_grads = _grads(layer, z, x, mask, g)
    layer.chunk_size = 17
    out, grads = _grads(layer, z, x, mask, g)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("use_fused", [True, False])
def test_kernels_agree(use_fused):
    torch.manual_seed(1)
    q = torch.randn(2, 2, 5, 8, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 50, 6, dtype=torch.float64, requires_grad=True)
    wk, wv = (torch.randn(6, 16, dtype=torch.float64, requires_grad=True) for _ in range(2))

    def key_values(xc):
        return tuple((xc @ w).unflatten(-1, (2, 8)).transpose(1, 2) for w in (wk, wv))

    k, v = key_values(x)
    ref = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, -1) @ v  # the textbook formula
    out = streamed_attention(q, x, key_values, [wk, wv], None, 7, 8**-0.5, use_fused=use_fused)
    g = torch.randn_like(ref)
    torch.testing.assert_close(out, ref)
    for a, b in zip(torch.autograd.grad(out, [q, x, wk, wv], g), torch.autograd.grad(ref, [q, x, wk, wv], g),
                    strict=True):
        torch.testing.assert_close(a, b)


def test_model_bf16_autocast_close_to_fp32():
    torch.manual_seed(0)
    config = presets.byte_classifier(num_classes=3, max_seq_len=64, dim=16, num_latents=8, latent_dim=32,
                                     num_layers=1, num_heads=2, cross_chunk_size=16)
    model = PerceiverIO(config)
    ids = torch.randint(0, 262, (2, 64))
    mask = torch.ones(2, 64, dtype=torch.bool)
    mask[0, 30:] = False  # padding in the last chunks of one example and the first of the other
    mask[1, :20] = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_bf16 = model(ids, attention_mask=mask).logits.float().square().sum()
    loss_bf16.backward()  # recomputes the chunks under autocast too
    grad_bf16 = model.input_adapter.embedding.weight.grad.clone()
    model.zero_grad()
    loss = model(ids, attention_mask=mask).logits.square().sum()
    loss.backward()
    grad = model.input_adapter.embedding.weight.grad
    assert abs(loss_bf16.item() - loss.item()) <= 0.05 * abs(loss.item())
    assert torch.linalg.vector_norm(grad_bf16 - grad) <= 0.1 * torch.linalg.vector_norm(grad)


def test_a_trained_key_bias_is_refused():
    q, x = torch.randn(1, 2, 3, 4), torch.randn(1, 5, 4)
    bias = torch.zeros(1, 2, 5, requires_grad=True)
    with pytest.raises(ValueError, match="bias: streamed attention gives the key bias no gradient"):
        streamed_attention(q, x, lambda xc: (xc[:, None].expand(-1, 2, -1, -1),) * 2, [], None, 2, 0.5,
                           bias=bias)


def test_bad_chunk_size():
    with pytest.raises(ValueError, match="chunk_size"):
        CrossAttentionLayer(8, 8, chunk_size=0)


def test_only_queries_learn():
    """Frozen input path (no gradient for the input or the key/value weights): the queries still
    get the unchunked gradient."""
    torch.manual_seed(2)
    layer = CrossAttentionLayer(16, 8, 2).double()
    x = torch.randn(2, 40, 8, dtype=torch.float64)
    for p in [*layer.kv_norm.parameters(), *layer.attention.k_proj.parameters(),
              *layer.attention.v_proj.parameters()]:
        p.requires_grad_(False)
    z = torch.randn(2, 4, 16, dtype=torch.float64, requires_grad=True)
    (ref,) = torch.autograd.grad(layer(z, x).sum(), z)
    layer.chunk_size = 9
    (got,) = torch.autograd.grad(layer(z, x).sum(), z)
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("use_fused", [True, False])
def test_chunked_input_matches_the_whole_array(use_fused):
    """A ``ChunkedInput`` (ids gathered from an embedding table, plus a prefix of a position table
    shared by the batch) streams to the textbook attention over the whole embedded array, with the
    gradients of both tables written chunk by chunk."""
    torch.manual_seed(3)
    q = torch.randn(3, 2, 4, 8, dtype=torch.float64, requires_grad=True)
    table = torch.randn(11, 6, dtype=torch.float64, requires_grad=True)
    positions = torch.randn(60, 6, dtype=torch.float64, requires_grad=True)  # 60 rows; M = 50 used
    ids = torch.randint(0, 11, (3, 50))
    wk, wv = (torch.randn(6, 16, dtype=torch.float64, requires_grad=True) for _ in range(2))

    def key_values(xc):
        return tuple((xc @ w).unflatten(-1, (2, 8)).transpose(1, 2) for w in (wk, wv))

    def embed(ids_c, positions_c):
        return table[ids_c] + positions_c

    x = ChunkedInput((ids, positions[:50][None]), embed, (table,), torch.Size((3, 50, 6)), torch.float64)
    whole = table[ids] + positions[:50]
    k, v = key_values(whole)
    ref = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, -1) @ v
    out = streamed_attention(q, x, key_values, [wk, wv], None, 7, 8**-0.5, use_fused=use_fused)
    g = torch.randn_like(ref)
    wrt = [q, table, positions, wk, wv]
    torch.testing.assert_close(out, ref)
    for a, b in zip(torch.autograd.grad(out, wrt, g), torch.autograd.grad(ref, wrt, g), strict=True):
        torch.testing.assert_close(a, b)


def _float64_classifier(chunk_size, max_seq_len=960, **options):
    torch.manual_seed(0)
    config = presets.byte_classifier(num_classes=3, max_seq_len=max_seq_len, dim=16, num_latents=8,
                                     latent_dim=32, num_layers=1, num_heads=2, cross_chunk_size=chunk_size,
                                     **options)
    model = PerceiverIO(config).double()
    for p in model.input_adapter.parameters():  # zero-initialised running-sum layers count too
        torch.nn.init.normal_(p, std=0.5)
    return model


# chunks of 300 bytes x 16 channels: the 262 byte embeddings (and 16 depth ones) pay in chunks
@pytest.mark.parametrize("length, options", [
    (960, {}),  # the whole position table
    (850, {}),  # a prefix of it
    (850, {"depth_brackets": "[]"}),  # depth rows streamed beside the ids, and the depth key bias
    (850, {"running_sums": 4}),  # running sums need the whole array: computed whole, then streamed
])
def test_model_streams_token_inputs_exactly(length, options):
    ids = torch.randint(0, 262, (2, length), generator=torch.Generator().manual_seed(1))
    opening, closing = encode("[]")
    ids[:, 5], ids[:, 9], ids[:, 200], ids[:, 400] = opening, closing, opening, opening  # depths 0 to 2
    mask = torch.ones(2, length, dtype=torch.bool)
    mask[1, 700:] = False
    results = []
    for chunk_size in (None, 300):
        model = _float64_classifier(chunk_size, **options)
        logits = model(ids, attention_mask=mask).logits
        logits.square().sum().backward()
        results.append((logits, {n: p.grad for n, p in model.named_parameters()}))
    (ref, ref_grads), (out, grads) = results
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    assert grads.keys() == ref_grads.keys()
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("options, kept", [({}, False), ({"running_sums": 4}, True)])
def test_streamed_token_inputs_keep_no_embedded_array(options, kept):
    """The backward pass of a streamed token input keeps the ids, not the embedded array
    ``[B, M, dim]`` (running sums need it whole, so there it is kept)."""
    model = _float64_classifier(300, **options)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = []

    def pack(t):
        if t.is_floating_point() and t.untyped_storage().data_ptr() not in params:
            saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randint(0, 262, (1, 960))).logits.sum()
    assert any(shape[-2:] == (960, 16) for shape in saved) == kept, saved


def test_chunked_input_to_another_dtype():
    table = torch.randn(5, 3)
    x = ChunkedInput((torch.tensor([[0, 4, 2]]),), lambda ids: table[ids], (), torch.Size((1, 3, 3)),
                     torch.float32)
    assert x.to(torch.float32) is x
    doubled = x.to(torch.float64)
    assert doubled.dtype == torch.float64 and doubled.shape == x.shape
    out = doubled.materialise()
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, table[[0, 4, 2]][None].double())


@pytest.mark.parametrize("vocab_size, kept", [(262, False), (5000, True)])
def test_a_large_vocabulary_is_embedded_whole(vocab_size, kept):
    """Chunks of 300 x 16 channels (4,800 values): 262 byte embeddings (4,192 weights) are embedded
    chunk by chunk; 5,000 token embeddings (80,000 weights, a dense gradient per chunk) are embedded
    whole, once. Both give the outputs and gradients of attention without chunks."""
    config = presets.byte_classifier(num_classes=3, max_seq_len=640, dim=16, num_latents=8, latent_dim=32,
                                     num_layers=1, num_heads=2)
    config.input = TokenInputAdapter.Config(vocab_size, 16, 640)
    ids = torch.randint(0, vocab_size, (1, 640), generator=torch.Generator().manual_seed(0))
    results = []
    for chunk_size in (None, 300):
        config.encoder.cross_chunk_size = chunk_size
        torch.manual_seed(0)
        model = PerceiverIO(config).double()
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        saved = []

        def pack(t, params=params, saved=saved):
            if t.is_floating_point() and t.untyped_storage().data_ptr() not in params:
                saved.append(tuple(t.shape))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logits = model(ids).logits
        logits.sum().backward()
        results.append((logits, model.input_adapter.embedding.weight.grad, saved))
    (ref, ref_grad, _), (out, grad, saved) = results
    assert any(shape[-2:] == (640, 16) for shape in saved) == kept, saved
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-11)
