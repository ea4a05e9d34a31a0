"""HiP's group allocation and the grouping round trip."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from perceiver.hip import GroupLayout, allocate_groups


@pytest.mark.parametrize("lengths, groups, expected, size", [
    ({"imagenet_image": 1024, "imagenet_label": 32}, 16, [15, 1], 69),  # hip.md, the official mock data
    ({"audioset_audio": 128, "audioset_label": 16}, 16, [14, 2], 10),
    ({"imagenet_image": 1024, "imagenet_label": 32}, 256, [248, 8], 5),
    ({"audioset_audio": 128, "audioset_label": 16}, 256, [227, 29], 1),
])
def test_allocation_matches_the_official_splits(lengths, groups, expected, size):
    assert list(allocate_groups(lengths, groups).values()) == expected
    assert GroupLayout.plan(lengths, groups).group_size == size


def test_ties_go_to_the_first_modality():
    assert allocate_groups({"a": 8, "b": 8}, 3) == {"a": 2, "b": 1}


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=4), extra=st.integers(0, 12),
       channels=st.integers(1, 3))
def test_grouping_round_trip_for_uneven_modalities(lengths, extra, channels):
    names = [f"m{i}" for i in range(len(lengths))]
    sizes = dict(zip(names, lengths, strict=True))
    layout = GroupLayout.plan(sizes, len(lengths) + extra)
    tokens = {n: torch.randn(2, m, channels) for n, m in sizes.items()}
    grouped = layout.group(tokens)
    assert grouped.shape == (2, len(lengths) + extra, layout.group_size, channels)
    assert sum(layout.groups.values()) == len(lengths) + extra
    back = layout.ungroup(grouped)
    assert list(back) == names and all(torch.equal(back[n], tokens[n]) for n in names)
    # every token appears exactly once; everything else is zero padding
    assert int((grouped != 0).sum()) == sum(int((t != 0).sum()) for t in tokens.values())
    # contiguous groups: modality m0's first group holds its first tokens, in order
    first = min(sizes["m0"], -(-sizes["m0"] // layout.groups["m0"]))
    assert torch.equal(grouped[:, 0, :first], tokens["m0"][:, :first])


def test_more_modalities_than_groups_is_refused():
    with pytest.raises(ValueError, match=r"expected at most num_groups=2 modalities, got 3"):
        allocate_groups({"a": 4, "b": 4, "c": 4}, 2)


def test_one_modality_that_needs_no_padding_is_grouped_as_a_view():
    """No copy of a million-token input: its groups are its own storage, and its gradient arrives
    unchanged; one that needs padding gets zeros, and its padding no gradient."""
    layout = GroupLayout.plan({"signal": 64}, 4)
    tokens = torch.randn(2, 64, 3, requires_grad=True)
    grouped = layout.group({"signal": tokens})
    assert grouped.data_ptr() == tokens.data_ptr() and torch.equal(grouped.flatten(1, 2), tokens)
    padded_layout = GroupLayout.plan({"signal": 63}, 4)
    short = torch.randn(2, 63, 3, requires_grad=True)
    padded = padded_layout.group({"signal": short})
    assert torch.equal(padded[:, -1, -1], torch.zeros(2, 3))
    weights = torch.randn(padded.shape)
    (padded * weights).sum().backward()
    assert torch.equal(short.grad, weights.flatten(1, 2)[:, :63])
