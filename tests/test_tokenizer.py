import pytest
import torch

from perceiver import tokenizer


def test_round_trip_and_layout():
    text = "naïve café — 東京"
    ids = tokenizer.encode(text)
    assert ids[0] == ord("n") + 6 and max(ids) < tokenizer.VOCAB_SIZE == 262
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode("a", add_special_tokens=True) == [tokenizer.CLS, 97 + 6, tokenizer.SEP]


def test_batch_encode_pads_and_truncates():
    ids, mask = tokenizer.batch_encode(["abc", "a", "abcdefgh"], max_length=5)
    assert ids.shape == (3, 5) and mask.tolist()[1] == [1, 0, 0, 0, 0]
    assert ids[1, 1:].eq(tokenizer.PAD).all() and tokenizer.decode(ids[2]) == "abcde"


def test_matches_transformers_tokenizer():
    transformers = pytest.importorskip("transformers")
    theirs = transformers.PerceiverTokenizer()
    text = "Hello wörld"
    assert theirs(text)["input_ids"] == tokenizer.encode(text, add_special_tokens=True)
    assert theirs.mask_token_id == tokenizer.MASK and theirs.pad_token_id == tokenizer.PAD
    assert torch.tensor(tokenizer.encode(text)).max() < theirs.vocab_size


def test_non_strings_are_refused_naming_the_argument():
    with pytest.raises(ValueError, match="text: expected a str, got int 5"):
        tokenizer.encode(5)
    with pytest.raises(ValueError, match="texts: expected a list of str, got one str 'abc'"):
        tokenizer.batch_encode("abc", 8)
