import pytest
import torch

from perceiver.inputs import TokenInputAdapter


def test_embedding_plus_positions():
    adapter = TokenInputAdapter(TokenInputAdapter.Config(vocab_size=20, dim=8, max_seq_len=6))
    ids = torch.tensor([[3, 4, 19], [0, 0, 1]])
    x, mask = adapter(ids)
    expected = adapter.embedding.weight[ids] + adapter.positions.table[:3]
    torch.testing.assert_close(x, expected)
    assert mask is None and adapter.output_dim == 8


@pytest.mark.parametrize("batch, length", [(1, 6), (1, 4), (3, 6), (3, 4)])
def test_gradients_reach_embedding_and_positions(batch, length):
    """Against a float64 gather-and-add: one example or several, the full table or a prefix."""
    torch.manual_seed(batch * 10 + length)
    adapter = TokenInputAdapter(TokenInputAdapter.Config(vocab_size=20, dim=8, max_seq_len=6)).double()
    ids = torch.randint(0, 20, (batch, length))
    upstream = torch.randn(batch, length, 8, dtype=torch.float64)
    x, _ = adapter(ids)
    (x * upstream).sum().backward()
    expected_table = torch.zeros(6, 8, dtype=torch.float64)
    expected_table[:length] = upstream.sum(0)
    expected_embedding = torch.zeros(20, 8, dtype=torch.float64).index_add_(0, ids.flatten(),
                                                                           upstream.flatten(0, 1))
    torch.testing.assert_close(adapter.positions.table.grad, expected_table)
    torch.testing.assert_close(adapter.embedding.weight.grad, expected_embedding)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")  # the ids need no gradient
def test_a_full_backward_hook_on_the_embedding():
    """Hooks on the embedding module see its gradient; the positions are added out of place, as
    hooks' views require (an in-place add raised a RuntimeError here)."""
    adapter = TokenInputAdapter(TokenInputAdapter.Config(vocab_size=20, dim=8, max_seq_len=6)).double()
    seen = []
    adapter.embedding.register_full_backward_hook(lambda module, grad_in, grad_out: seen.append(grad_out[0]))
    ids = torch.tensor([[3, 4, 19, 0, 1, 2]])
    upstream = torch.randn(1, 6, 8, dtype=torch.float64)
    x, _ = adapter(ids)
    (x * upstream).sum().backward()
    torch.testing.assert_close(seen[0], upstream)
    torch.testing.assert_close(adapter.positions.table.grad, upstream[0])


@pytest.mark.parametrize("ids, message", [
    (torch.zeros(2, 7, dtype=torch.long), "inputs: expected at most max_seq_len=6 tokens, got 7"),
    (torch.zeros(2, 3), "inputs: expected an integer tensor, got torch.float32"),
    (torch.zeros(3, dtype=torch.long), r"inputs: expected a 2-D tensor, got shape \[3\]"),
    (torch.tensor([[0, 20]]), r"inputs: expected token ids in \[0, 20\), got \[0, 20\]"),
])
def test_bad_inputs(ids, message):
    adapter = TokenInputAdapter(TokenInputAdapter.Config(vocab_size=20, dim=8, max_seq_len=6))
    with pytest.raises(ValueError, match=message):
        adapter(ids)


def adapter_with_running_sums(channels=3):
    torch.manual_seed(0)
    config = TokenInputAdapter.Config(vocab_size=20, dim=8, max_seq_len=12, running_sums=channels)
    adapter = TokenInputAdapter(config)
    torch.nn.init.normal_(adapter.running_sums.mlp[2].weight)  # zero at initialisation
    return adapter


def test_running_sums_match_float64_loop():
    adapter = adapter_with_running_sums()
    ids = torch.randint(0, 20, (2, 10))
    got, _ = adapter(ids)
    sums_layer = adapter.running_sums
    w = {name: p.double() for name, p in sums_layer.named_parameters()}
    base = (adapter.embedding.weight[ids] + adapter.positions.table[:10]).double()
    expected = torch.empty_like(base)
    for b in range(2):
        total = torch.zeros(3, dtype=torch.float64)
        for t in range(10):
            total = total + base[b, t] @ w["project.weight"].T + w["project.bias"]
            hidden = torch.nn.functional.gelu(total / 8 @ w["mlp.0.weight"].T + w["mlp.0.bias"])
            expected[b, t] = base[b, t] + hidden @ w["mlp.2.weight"].T + w["mlp.2.bias"]
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


def test_running_sums_start_as_the_plain_adapter_and_ignore_later_tokens():
    torch.manual_seed(0)
    plain = TokenInputAdapter(TokenInputAdapter.Config(vocab_size=20, dim=8, max_seq_len=12))
    torch.manual_seed(0)
    summed = TokenInputAdapter(TokenInputAdapter.Config(vocab_size=20, dim=8, max_seq_len=12, running_sums=4))
    ids = torch.randint(0, 20, (3, 12))
    torch.testing.assert_close(summed(ids)[0], plain(ids)[0])
    adapter = adapter_with_running_sums()
    short, long = adapter(ids[:, :5])[0], adapter(ids)[0]
    torch.testing.assert_close(short, long[:, :5])  # padding appended later never changes a position
    assert not torch.allclose(long[:, 5:], plain(ids)[0][:, 5:], atol=1e-3)


def test_running_sums_in_a_bfloat16_adapter():
    adapter = adapter_with_running_sums()
    ids = torch.randint(0, 20, (2, 12))
    expected = adapter(ids)[0].detach()
    got = adapter.to(torch.bfloat16)(ids)[0]
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, atol=5e-2 * float(expected.abs().max()), rtol=0)


def stack_depths(ids, open_id, close_id):
    """Nesting depth per token by a stack walk; unmatched closings are ignored."""
    depths, open_lists = [], 0
    for token in ids:
        if token == open_id:
            open_lists += 1
            depths.append(open_lists)
        elif token == close_id:
            depths.append(open_lists)
            open_lists = max(open_lists - 1, 0)
        else:
            depths.append(open_lists)
    return depths


def depth_adapter(slopes=(0.0, 1.0, 2.0), max_depth=4):
    torch.manual_seed(0)
    config = TokenInputAdapter.Config(vocab_size=6, dim=8, max_seq_len=40, depth_tokens=(1, 2),
                                      depth_slopes=slopes, max_depth=max_depth)
    return TokenInputAdapter(config)


def test_nesting_depth_matches_a_stack_walk():
    adapter = depth_adapter()
    hand = torch.tensor([[1, 3, 4, 1, 5, 5, 2, 2]])  # [ a b [ c c ] ]
    assert adapter.depth.depth(hand).tolist() == [[1, 1, 1, 2, 2, 2, 2, 1]]
    ids = torch.randint(0, 6, (50, 40))  # random brackets: unmatched closings and openings abound
    expected = torch.tensor([stack_depths(row, 1, 2) for row in ids.tolist()])
    assert int(expected.max()) > 4 and bool((ids == 2).any())
    torch.testing.assert_close(adapter.depth.depth(ids), expected)


def test_depth_embedding_and_key_bias():
    adapter = depth_adapter()
    ids = torch.tensor([[1, 3, 1, 1, 1, 1, 2, 2], [1, 4, 2, 2, 0, 0, 0, 0]])
    mask = torch.tensor([[1] * 8, [1, 1, 1, 1, 0, 0, 0, 0]])
    x, bias = adapter(ids, mask)
    depth = torch.tensor([[1, 1, 2, 3, 4, 5, 5, 4], [1, 1, 1, 0, 0, 0, 0, 0]])
    expected = (adapter.embedding.weight[ids] + adapter.positions.table[:8]
                + adapter.depth.embedding.weight[depth.clamp(max=3)])  # depths 3+ share a row
    torch.testing.assert_close(x, expected)
    assert bias.shape == (2, 3, 8)
    expected_bias = -torch.tensor([0.0, 1.0, 2.0])[None, :, None] * depth[:, None, :]
    torch.testing.assert_close(bias[0], expected_bias[0])
    torch.testing.assert_close(bias[1, :, :4], expected_bias[1, :, :4])
    assert bool((bias[1, :, 4:] == float("-inf")).all())
    without_mask = adapter(ids)[1]
    torch.testing.assert_close(without_mask, expected_bias)
    no_slopes = depth_adapter(slopes=())
    x2, passed = no_slopes(ids, mask)
    torch.testing.assert_close(x2, expected)  # same seed: same tables
    assert passed is mask


def test_depth_option_errors():
    with pytest.raises(ValueError, match=r"depth_slopes: expected depth_tokens .* got depth_slopes=\(1.0,\)"):
        TokenInputAdapter(TokenInputAdapter.Config(vocab_size=6, dim=8, depth_slopes=(1.0,)))
    with pytest.raises(ValueError, match="max_depth: expected at least 1, got 0"):
        depth_adapter(max_depth=0)
    with pytest.raises(ValueError, match=r"attention_mask: expected shape \[2, 3\], got \[2, 4\]"):
        depth_adapter()(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 4))
