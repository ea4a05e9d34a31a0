import pytest
import torch

from perceiver.positions import fourier_features
from perceiver.queries import (
    FourierQueries,
    InputQueries,
    LearnedPositionQueries,
    LearnedQueries,
    MultimodalQueries,
)


def test_learned_and_position_queries():
    x = torch.randn(3, 5, 7)
    learned = LearnedQueries(LearnedQueries.Config(2, 4))
    assert learned(x).shape == (3, 2, 4)
    positions = LearnedPositionQueries(LearnedPositionQueries.Config(10, 4))
    torch.testing.assert_close(positions(x)[0], positions.table.table[:5])  # one per input position
    index = torch.tensor([9, 2])
    torch.testing.assert_close(positions(x, index)[2], positions.table.table[index])


def test_position_queries_by_default_match_the_gathered_rows_and_their_gradient():
    positions = LearnedPositionQueries(LearnedPositionQueries.Config(10, 4)).double()
    for length in (5, 10):  # a part of the table, and all of it
        x = torch.randn(3, length, 7, dtype=torch.float64)
        weights = torch.randn(3, length, 4, dtype=torch.float64)
        grads = []
        for index in (None, torch.arange(length)):
            positions.zero_grad()
            out = positions(x, index)
            (out * weights).sum().backward()
            grads.append((out.detach(), positions.table.table.grad.clone()))
        torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=0)
        torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-15, atol=0)
        torch.testing.assert_close(grads[0][1][:length], weights.sum(0))
        assert not grads[0][1][length:].any()
    with pytest.raises(ValueError, match=r"inputs: expected at most num_queries=10 positions .*got 11"):
        positions(torch.randn(1, 11, 7, dtype=torch.float64))


def test_position_queries_by_default_trace_without_a_graph_break():
    """One query per input position needs no index check (whose values would break the graph)."""
    positions = LearnedPositionQueries(LearnedPositionQueries.Config(10, 4))
    x = torch.randn(2, 6, 4)
    traced = torch.compile(positions, fullgraph=True, backend="eager")
    torch.testing.assert_close(traced(x), positions.table.table[:6].expand(2, -1, -1))


def test_a_different_subset_per_example():
    x = torch.randn(2, 5, 4)
    index = torch.tensor([[4, 0, 1], [2, 2, 3]])
    positions = LearnedPositionQueries(LearnedPositionQueries.Config(10, 4))
    out = positions(x, index)
    torch.testing.assert_close(out[1], positions.table.table[index[1]])
    fourier = FourierQueries(FourierQueries.Config((5,), 2))
    torch.testing.assert_close(fourier(x, index)[0], fourier_features((5,), 2)[index[0]])
    inputs = InputQueries(InputQueries.Config(4))
    torch.testing.assert_close(inputs(x, index)[1], x[1, index[1]])
    with pytest.raises(ValueError, match=r"query_index: expected 2 rows \(one per example\), got 3"):
        positions(x, torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"expected a 1-D \[O\] or 2-D \[B, O\] integer tensor"):
        positions(x, torch.zeros(1, 2, 2, dtype=torch.long))


def test_fourier_queries_any_subset():
    q = FourierQueries(FourierQueries.Config((4, 6), 3))
    x = torch.randn(2, 1, 1)
    torch.testing.assert_close(q(x)[1], fourier_features((4, 6), 3))
    index = torch.tensor([23, 5, 0])
    torch.testing.assert_close(q(x, index)[0], fourier_features((4, 6), 3)[index])


def test_input_queries_are_the_adapted_inputs():
    q = InputQueries(InputQueries.Config(7))
    x = torch.randn(2, 5, 7)
    assert q(x) is x
    torch.testing.assert_close(q(x, torch.tensor([4, 1])), x[:, [4, 1]])
    with pytest.raises(ValueError, match="expected adapted inputs of width 7"):
        q(torch.randn(2, 5, 6))


def test_multimodal_queries_padded_to_common_width():
    q = MultimodalQueries(MultimodalQueries.Config(modalities={
        "image": FourierQueries.Config((2, 2), 2), "label": LearnedQueries.Config(1, 3)}))
    out = q(torch.randn(2, 1, 1), {"image": torch.tensor([3])})
    assert list(out) == ["image", "label"] and q.output_dim == 10 + 2
    assert out["image"].shape == (2, 1, 12) and out["label"].shape == (2, 1, 12)
    torch.testing.assert_close(out["label"][0, 0, 3:], q.padding["label"])
    with pytest.raises(ValueError, match=r"query_index: unknown modalities \['audio'\]"):
        q(torch.randn(2, 1, 1), {"audio": torch.tensor([0])})
