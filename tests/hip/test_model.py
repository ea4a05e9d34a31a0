"""HiP end to end: the official parameter counts, shapes of every variant, gradients, bad input."""

import pytest
import torch

from perceiver.hip import VARIANTS, BlockConfig, HiPBlock, build_hip, regroup
from tests.test_layers import saved_bytes

# The official test's modalities (shared/reference/hip.md): two datasets, two modalities each.
MODALITIES = {"imagenet_image": (1024, 3), "imagenet_label": (32, 1), "audioset_audio": (128, 16),
              "audioset_label": (16, 16)}
DATASETS = [("imagenet_image", "imagenet_label"), ("audioset_audio", "audioset_label")]
OFFICIAL = {"mini": 18_709_668, "16": 99_224_996, "256": 95_585_188, "16x3": 233_240_356}


@pytest.mark.parametrize("variant", sorted(OFFICIAL))
def test_parameter_counts_are_the_official_ones_plus_one_projection_per_extra_modality(variant):
    with torch.device("meta"):
        model = build_hip(variant, MODALITIES, num_position_encoding_channels=512)
    e = VARIANTS[variant]["embedding_channels"]
    # the official code shares 2 projections by dict slot; here each of the 4 modalities has its own
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL[variant] + 2 * e * e


def test_latent_overrides_change_the_table_only_for_evaluation_counts():
    def count(**overrides):
        with torch.device("meta"):
            model = build_hip("mini", MODALITIES, num_position_encoding_channels=512, **overrides)
        return sum(p.numel() for p in model.parameters())

    assert count(processor_latents_eval=128) == 18_775_204 + 2 * 32 * 32  # hip.md section 8
    assert count(processor_latents_train=32) == OFFICIAL["mini"] + 2 * 32 * 32
    with pytest.raises(ValueError, match="at most one of them, got both"):
        count(processor_latents_train=32, processor_latents_eval=128)


@pytest.mark.parametrize("variant, overrides", [
    ("mini", {}), ("mini", {"processor_latents_train": 32}), ("mini", {"processor_latents_eval": 128}),
    ("16", {}), ("256", {}), ("16x3", {}), ("mini", {"transpose_regroup": True}),
])
def test_reconstructions_have_the_input_shapes_in_train_and_eval(variant, overrides):
    torch.manual_seed(0)
    model = build_hip(variant, MODALITIES, num_position_encoding_channels=512, **overrides)
    for mode in (model.train, model.eval):
        mode()
        for dataset in DATASETS:
            inputs = {n: torch.randn(2, *MODALITIES[n]) for n in dataset}
            out = model(inputs)
            assert {n: v.shape for n, v in out.logits.items()} == {n: x.shape for n, x in inputs.items()}
            assert out.latents.shape[:2] == (2, VARIANTS[variant]["num_groups"][-1])


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = build_hip("mini", MODALITIES, num_position_encoding_channels=512, dropout=0.1, drop_path=0.1)
    inputs = {n: torch.randn(2, *size) for n, size in MODALITIES.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):  # the output layers start at zero, so the rest only gets gradient after a step
        optimizer.zero_grad()
        sum(v.square().mean() - (v * inputs[n]).mean() for n, v in model(inputs).logits.items()).backward()
        optimizer.step()
    # a key bias shifts every key's score alike, which softmax ignores: its exact gradient is 0
    # (rounding when the keys are projected, exactly 0 when the projection is absorbed)
    missing = [n for n, p in model.named_parameters()
               if p.grad is None or not (p.grad.abs().sum() > 0 or n.endswith("k_proj.bias"))]
    assert missing == []


TINY = dict(num_groups=(4, 1, 4), num_latents=(8, 16, 8), channels=(16, 32, 16), num_self_layers=(2, 1, 1),
            num_self_heads=(2, 2, 2), embedding_channels=8)


@pytest.mark.parametrize("head_chunk_size", [None, 5])  # 16 positions a group: chunks of 5, 5, 5, 1
def test_checkpointing_keeps_less_and_gives_identical_gradients(head_chunk_size):
    tiny = dict(TINY, processor_latents_train=8, head_chunk_size=head_chunk_size)
    inputs = {"signal": torch.randn(2, 64, 3)}
    runs = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_hip("mini", {"signal": (64, 3)}, dropout=0.1, drop_path=0.1,
                          checkpointing=checkpointing, **tiny)
        torch.nn.init.normal_(model.unembed["signal"].weight, std=0.1)  # zero: no gradient behind it
        torch.manual_seed(1)  # same dropout, drop-path and latent subsets; checkpointing replays them
        out, saved = saved_bytes(lambda: model(inputs).logits["signal"])  # noqa: B023
        out.square().mean().backward()
        runs.append((saved, {n: p.grad for n, p in model.named_parameters()}))
    # the blocks' cross-attentions and stacks checkpointed: 0.18 (0.42 with the stacks alone); and the
    # head's chunks: 0.079 (a head in one chunk is not checkpointed)
    assert runs[1][0] < runs[0][0] / (4 if head_chunk_size is None else 10)
    assert all(g is not None for g in runs[1][1].values())
    for name, grad in runs[0][1].items():
        torch.testing.assert_close(runs[1][1][name], grad, atol=0, rtol=0, msg=name)


def test_the_head_in_chunks_gives_the_same_reconstructions():
    torch.manual_seed(0)
    whole = build_hip("mini", {"signal": (64, 3)}, **TINY).eval()
    chunked = build_hip("mini", {"signal": (64, 3)}, head_chunk_size=5, **TINY).eval()
    chunked.load_state_dict(whole.state_dict())
    torch.nn.init.normal_(whole.unembed["signal"].weight, std=0.1)
    chunked.unembed["signal"].weight.data.copy_(whole.unembed["signal"].weight)
    inputs = {"signal": torch.randn(2, 64, 3)}
    torch.testing.assert_close(chunked(inputs).logits["signal"], whole(inputs).logits["signal"])
    with pytest.raises(ValueError, match="head_chunk_size: expected an integer >= 1, got 0"):
        build_hip("mini", {"signal": (64, 3)}, head_chunk_size=0, **TINY)


def test_subsampled_latents_are_distinct_rows_per_example_and_group():
    block = HiPBlock(BlockConfig(2, 6, 8, 1, 2, num_latents_train=4), in_channels=8)
    torch.nn.init.normal_(block.latents)
    block.train()
    q = block.queries(3)
    assert q.shape == (3, 2, 4, 8)
    table = block.latents.view(2, 6, 8)
    for b in range(3):
        for g in range(2):
            rows = [int((table[g] == row).all(-1).nonzero()) for row in q[b, g]]
            assert len(set(rows)) == 4
    block.eval()
    assert torch.equal(block.queries(3)[1], table)


def test_regroup_row_major_and_transposed():
    x = torch.arange(2 * 4 * 3).view(1, 4, 3, 2).float()  # [B, G'=4, N'=3, C=2]
    assert torch.equal(regroup(x, 2), x.reshape(1, 2, 6, 2))
    assert torch.equal(regroup(x, 2, transpose=True), x.transpose(1, 2).reshape(1, 2, 6, 2))
    with pytest.raises(ValueError, match="num_groups: expected a divisor of the 12 tokens"):
        regroup(x, 5)


@pytest.mark.parametrize("inputs, message", [
    ({"video": torch.randn(1, 4, 3)}, "unknown modality 'video'"),
    ({"imagenet_image": torch.randn(1, 1024, 4)},
     r"inputs\['imagenet_image'\]: expected shape \[B, 1024, 3\] \(or ids \[B, 1024\]\), "
     r"got \[1, 1024, 4\]"),
    ({"imagenet_image": torch.tensor([[0, 3] * 512])}, r"expected ids in \[0, 3\), got \[0, 3\]"),
    ({}, "inputs: expected a dict of tensors"),
])
def test_bad_inputs_are_named(inputs, message):
    model = build_hip("mini", MODALITIES)
    with pytest.raises(ValueError, match=message):
        model(inputs)


def test_token_ids_are_embedded_as_their_one_hot_vectors():
    torch.manual_seed(0)
    model = build_hip("mini", {"bytes": (64, 262)}).eval()
    for linear in model.unembed.values():
        torch.nn.init.normal_(linear.weight)
    ids = torch.randint(0, 262, (2, 64))
    one_hot = torch.nn.functional.one_hot(ids, 262).float()
    from_ids, from_vectors = (model({"bytes": x}).logits["bytes"] for x in (ids, one_hot))
    torch.testing.assert_close(from_ids, from_vectors)


def test_more_modalities_than_groups_and_bad_block_tuples_are_refused():
    many = {f"m{i}": (4, 1) for i in range(17)}
    model = build_hip("mini", many)
    with pytest.raises(ValueError, match="at most num_groups=16 modalities, got 17"):
        model({n: torch.randn(1, 4, 1) for n in many})
    with pytest.raises(ValueError, match="expected 1 group in the processor"):
        build_hip("mini", MODALITIES, num_groups=(16, 2, 16))
    with pytest.raises(ValueError, match="group count to divide the 1 x 64 latents of block 1, got 6"):
        build_hip("mini", MODALITIES, num_groups=(16, 1, 6))
    with pytest.raises(ValueError, match="divide the 1 x 20 latents of block 1, got 16"):
        build_hip("mini", MODALITIES, processor_latents_train=20)
    with pytest.raises(ValueError, match="the last block to have the first block's 16 groups, got 8"):
        build_hip("mini", MODALITIES, num_groups=(16, 1, 8))
    with pytest.raises(ValueError, match="variant: expected one of"):
        build_hip("huge", MODALITIES)


LABELS = ("audioset_label", "coco_labels", "imagenet_label", "jft_label", "multi_nli_labels",
          "objects365_labels")  # the official test's label modalities


def test_class_bottleneck_count_shapes_and_labels_read_at_the_processor(tmp_path):
    with torch.device("meta"):
        model = build_hip("mini", MODALITIES, label_modalities=LABELS, num_position_encoding_channels=512)
    # official 21,114,788 shares one projection between the two non-label modalities
    assert sum(p.numel() for p in model.parameters()) == 21_114_788 + 32 * 32
    torch.manual_seed(0)
    model = build_hip("mini", MODALITIES, label_modalities=LABELS, num_position_encoding_channels=512)
    for mode in (model.train, model.eval):
        mode()
        for dataset in [*DATASETS, ("imagenet_image",)]:
            inputs = {n: torch.randn(2, *MODALITIES[n]) for n in dataset}
            shapes = {n: v.shape for n, v in model(inputs).logits.items()}
            assert shapes == {n: x.shape for n, x in inputs.items()}
    # the label enters at the processor: it changes its read-out and, through the decoder blocks, the image
    for linear in [*model.unembed.values(), *model.label_unembed.values()]:
        torch.nn.init.normal_(linear.weight)
    image = torch.randn(1, 1024, 3)
    a, b = (model({"imagenet_image": image, "imagenet_label": torch.full((1, 32, 1), v)}) for v in (0.0, 5.0))
    assert not torch.allclose(a.logits["imagenet_label"], b.logits["imagenet_label"])
    assert not torch.allclose(a.logits["imagenet_image"], b.logits["imagenet_image"])
    with pytest.raises(ValueError, match="at least one modality that is not a label"):
        build_hip("mini", {"imagenet_label": (32, 1)}, label_modalities=LABELS)
