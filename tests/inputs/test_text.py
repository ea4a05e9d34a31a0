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
