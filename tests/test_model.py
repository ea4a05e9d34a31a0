import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from perceiver import EncoderConfig, Perceiver, PerceiverIO, presets, set_checkpointing, tokenizer
from perceiver.config import from_dict, to_dict
from perceiver.inputs import TokenInputAdapter
from tests.test_layers import saved_bytes


def tiny_mlm(**encoder):
    return PerceiverIO(presets.byte_mlm(max_seq_len=32, dim=16, num_latents=8, latent_dim=24, num_layers=2,
                                        num_heads=2, **encoder))


def tiny_classifier(**encoder):
    return PerceiverIO(presets.byte_classifier(num_classes=3, max_seq_len=40, dim=8, num_latents=6,
                                               latent_dim=16, num_layers=2, num_heads=2, **encoder))


def tiny_multimodal():
    return PerceiverIO(presets.multimodal_autoencoder(
        image_shape=(8, 8), patch_size=4, num_samples=64, samples_per_patch=16, num_classes=4,
        num_bands=2, num_latents=8, latent_dim=16, num_layers=1, query_bands=2))


def av_batch(batch=2):
    return {"image": torch.randn(batch, 1, 8, 8), "audio": torch.randn(batch, 64),
            "label": torch.arange(batch) % 4}


@pytest.mark.parametrize("make, inputs", [
    (tiny_mlm, lambda: torch.randint(0, 262, (2, 32))),
    (tiny_classifier, lambda: torch.randint(0, 262, (2, 40))),
    (tiny_multimodal, av_batch),
])
def test_gradients_reach_every_parameter(make, inputs):
    model = make()
    logits = model(inputs=inputs()).logits
    parts = logits.values() if isinstance(logits, dict) else [logits]
    loss = sum(v.square().mean() for v in parts)
    loss.backward()
    for name, p in model.named_parameters():
        if name.startswith("input_adapter.mask_tokens"):  # used only for masked modalities
            continue
        # a key bias shifts every key's score alike, which softmax ignores: its exact gradient is 0
        # (rounding when the keys are projected, exactly 0 when the projection is absorbed)
        assert p.grad is not None and (p.grad.abs().sum() > 0 or name.endswith("k_proj.bias")), name


@given(lengths=st.lists(st.integers(1, 40), min_size=2, max_size=3))
def test_padding_never_changes_unpadded_outputs(lengths):
    model = tiny_classifier().eval()
    ids = torch.randint(0, 262, (len(lengths), 40))
    mask = torch.zeros(len(lengths), 40, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    padded = model(inputs=ids, attention_mask=mask).logits
    for i, n in enumerate(lengths):
        alone = model(inputs=ids[i:i + 1, :n]).logits
        torch.testing.assert_close(padded[i:i + 1], alone, atol=1e-5, rtol=1e-4)


def test_all_masked_example_gives_finite_outputs():
    model = tiny_classifier()
    mask = torch.tensor([[1] * 10 + [0] * 30, [0] * 40])
    out = model(inputs=torch.randint(0, 262, (2, 40)), attention_mask=mask)
    assert torch.isfinite(out.logits).all()
    out.logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_query_subset_and_chunked_decoding_match_full_decoding():
    model = tiny_mlm().eval()
    ids = torch.randint(0, 262, (2, 32))
    full = model(inputs=ids).logits
    index = torch.tensor([31, 0, 7])
    torch.testing.assert_close(model(inputs=ids, query_index=index).logits, full[:, index])
    per_example = torch.tensor([[3, 30], [17, 3]])  # e.g. each example's masked positions
    torch.testing.assert_close(model(inputs=ids, query_index=per_example).logits,
                               torch.stack([full[0, [3, 30]], full[1, [17, 3]]]))
    model.decoder.chunk_size = 5
    torch.testing.assert_close(model(inputs=ids).logits, full, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("cross_chunk_size", [None, 16])  # 16: streamed, and not checkpointed
def test_encoder_checkpointing_gives_identical_gradients(cross_chunk_size):
    plain = tiny_classifier(cross_chunk_size=cross_chunk_size)
    ckpt = tiny_classifier(cross_chunk_size=cross_chunk_size, checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 262, (2, 40))
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, 20:] = 0
    for model in (plain, ckpt):
        model(inputs=ids, attention_mask=mask).logits.sum().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=0, rtol=0, msg=name)


@pytest.mark.parametrize("chunk_size", [12, None])
def test_set_checkpointing_reaches_a_decoder_in_chunks_with_identical_gradients(chunk_size):
    plain, ckpt = tiny_mlm(), tiny_mlm()
    ckpt.load_state_dict(plain.state_dict())
    set_checkpointing(ckpt, True)
    assert ckpt.encoder.checkpointing and ckpt.encoder.self_attention.checkpointing \
        and ckpt.decoder.checkpointing
    ids = torch.randint(0, 262, (2, 32))
    saved = []
    for model in (plain, ckpt):
        model.decoder.chunk_size = chunk_size  # 12: 32 queries in chunks of 12, 12 and 8
        x = model.input_adapter(ids)[0]
        latents, queries = model.encoder(x), model.queries(x, None)
        _, kept = saved_bytes(lambda: model.decoder(queries, latents))  # noqa: B023
        saved.append(kept)
        model(inputs=ids).logits.square().sum().backward()
    if chunk_size:  # only the queries (an expanded table) and the latents, and the parameters
        inputs = latents.untyped_storage().nbytes() + queries.untyped_storage().nbytes()
        weights = sum(p.untyped_storage().nbytes() for p in ckpt.decoder.cross_attention.parameters())
        assert saved[1] == inputs + weights and inputs < (saved[0] - weights) / 10
    else:  # one chunk, recomputed at once in the backward pass, would save nothing: run plainly
        assert saved[1] == saved[0]
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=0, rtol=0, msg=name)


def test_blocks_share_weights():
    shared = tiny_classifier(num_blocks=3)
    single = tiny_classifier(num_blocks=1)
    assert sum(p.numel() for p in shared.parameters()) == sum(p.numel() for p in single.parameters())
    single.load_state_dict(shared.state_dict())
    ids = torch.randint(0, 262, (1, 40))
    assert not torch.allclose(shared(inputs=ids).logits, single(inputs=ids).logits)


def test_original_perceiver_repeats_cross_attention_with_shared_weights():
    config = Perceiver.Config(
        input=TokenInputAdapter.Config(262, 8, 40),
        encoder=EncoderConfig(num_latents=4, latent_dim=16, num_self_layers=1, num_self_heads=2,
                              num_blocks=3, cross_attend_every_block=True), num_classes=5)
    model = Perceiver(config).eval()
    ids = torch.randint(0, 262, (2, 40))
    out = model(inputs=ids, return_attention=True)
    assert out.logits.shape == (2, 5) and len(out.attentions["self"]) == 3
    one_block = Perceiver(Perceiver.Config(config.input, EncoderConfig(
        num_latents=4, latent_dim=16, num_self_layers=1, num_self_heads=2, num_blocks=3), 5))
    cross_params = sum(p.numel() for p in model.encoder.cross_attention.parameters())
    extra = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in one_block.parameters())
    assert extra == cross_params  # one extra cross-attention, shared by blocks 2 and 3
    before = model(inputs=ids).logits
    with torch.no_grad():
        model.encoder.repeated_cross_attention.q_norm.weight.mul_(2)
    assert not torch.allclose(model(inputs=ids).logits, before)


def test_return_attention_maps():
    model = tiny_multimodal().eval()
    out = model(inputs=av_batch(), return_attention=True)
    att = out.attentions
    assert att["cross"].shape == (2, 1, 8, 4 + 4 + 1) and len(att["self"]) == 1
    assert att["decoder"]["image"].shape == (2, 1, 4, 8)
    torch.testing.assert_close(att["decoder"]["label"].sum(-1), torch.ones(2, 1, 1))
    batch = av_batch()
    explicit = model(inputs=batch, return_attention=True).logits  # explicit softmax path
    fused = model(inputs=batch).logits  # SDPA path
    for name in fused:
        torch.testing.assert_close(explicit[name], fused[name], atol=1e-5, rtol=1e-5)


def test_multimodal_subsampled_queries_and_masked_label():
    model = tiny_multimodal().eval()
    batch = av_batch()
    full = model(inputs=batch).logits
    part = model(inputs=batch, query_index={"image": torch.tensor([3, 1]), "audio": torch.tensor([2])})
    torch.testing.assert_close(part.logits["image"], full["image"][:, [3, 1]])
    torch.testing.assert_close(part.logits["audio"], full["audio"][:, [2]])
    masked = model(inputs=batch, modality_mask={"label": torch.tensor([True, True])}).logits["label"]
    unlabelled = model(inputs={k: v for k, v in batch.items() if k != "label"}).logits["label"]
    torch.testing.assert_close(masked, unlabelled)


@pytest.mark.parametrize("call, message", [
    (lambda m: m(inputs=torch.randint(0, 262, (2, 41))), "inputs: expected at most max_seq_len=40"),
    (lambda m: m(inputs=torch.randint(0, 262, (2, 40)), attention_mask=torch.ones(2, 39)),
     r"attention_mask: expected shape \[2, 40\]"),
    (lambda m: m(inputs=torch.randn(2, 40)), "inputs: expected an integer tensor"),
    (lambda m: m(inputs={"text": torch.zeros(2, 4)}), "inputs: expected a tensor, got dict"),
    (lambda m: m(inputs=torch.randint(0, 262, (2, 40)), modality_mask={"label": torch.ones(2)}),
     "modality_mask: expected a model with a multimodal input adapter, got TokenInputAdapter"),
    (lambda m: m(inputs=torch.randint(0, 262, (2, 40)), query_index={"label": torch.tensor([0])}),
     "query_index: expected a 1-D \\[O\\] or 2-D \\[B, O\\] integer tensor, got dict"),
])
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call(tiny_classifier())


def test_torch_compile_matches_eager():
    model = tiny_mlm().eval()
    ids = torch.randint(0, 262, (2, 32))
    mask = torch.ones(2, 32, dtype=torch.long)
    mask[0, 20:] = 0
    eager = model(inputs=ids, attention_mask=mask).logits
    compiled = torch.compile(model)
    torch.testing.assert_close(compiled(inputs=ids, attention_mask=mask).logits, eager, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_nesting_depth_bias_scales_the_cross_attention_by_depth():
    """With depth_brackets the cross-attention weights of head h are those without the bias times
    e^(-slope_h * depth), renormalised; padding changes nothing; the config round-trips."""
    torch.manual_seed(0)
    config = presets.byte_classifier(num_classes=3, max_seq_len=40, dim=8, num_latents=6, latent_dim=16,
                                     num_layers=1, num_heads=4, depth_brackets="[]")
    assert config.input.depth_slopes == presets.depth_slopes(4) == (0.0, 1.0, 2.0, 4.0)
    model = PerceiverIO(config).eval()
    text = "[MAX2[MIN34[SM5]]6]"
    ids = torch.tensor([tokenizer.encode(text) + [0] * 3])
    mask = torch.tensor([[1] * len(text) + [0] * 3])
    depth = torch.tensor([1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 2, 1, 1], dtype=torch.float64)
    out = model(ids, attention_mask=mask, return_attention=True)
    biased = out.attentions["cross"][0].double()  # [H, N, M]
    model.input_adapter.depth.slopes.zero_()
    plain = model(ids, attention_mask=mask, return_attention=True).attentions["cross"][0].double()
    log_ratio = (biased[..., :len(text)] / plain[..., :len(text)]).log()
    slopes = torch.tensor(presets.depth_slopes(4), dtype=torch.float64)
    centred = log_ratio + slopes[:, None, None] * depth  # a constant per row: the renormalisation
    torch.testing.assert_close(centred - centred[..., :1], torch.zeros_like(centred), atol=1e-5, rtol=0)
    assert float(biased[3, :, 11:16].sum(-1).max()) < 0.01  # slope 4: depth 3 weighs e^-8 of depth 1
    assert float(biased[..., len(text):].abs().max()) == 0.0
    model.input_adapter.depth.slopes.copy_(slopes)
    alone = model(ids[:, :len(text)]).logits
    torch.testing.assert_close(out.logits, alone, atol=1e-5, rtol=1e-4)
    loaded = PerceiverIO(from_dict(to_dict(config)))
    loaded.load_state_dict(model.state_dict())
    torch.testing.assert_close(loaded.eval()(ids, attention_mask=mask).logits, out.logits)
    with pytest.raises(ValueError, match="depth_brackets: expected two one-byte characters, .* got '<<>'"):
        presets.byte_classifier(depth_brackets="<<>")
