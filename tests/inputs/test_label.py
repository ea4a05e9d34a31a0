import pytest
import torch

from perceiver.inputs import OneHotLabelAdapter


def test_one_hot():
    adapter = OneHotLabelAdapter(OneHotLabelAdapter.Config(4))
    x, _ = adapter(torch.tensor([2, 0]))
    torch.testing.assert_close(x, torch.tensor([[[0.0, 0, 1, 0]], [[1.0, 0, 0, 0]]]))
    probs = torch.softmax(torch.randn(2, 4), -1)
    torch.testing.assert_close(adapter(probs)[0], probs[:, None])
    with pytest.raises(ValueError, match=r"inputs: expected class ids in \[0, 4\), got \[0, 4\]"):
        adapter(torch.tensor([0, 4]))
