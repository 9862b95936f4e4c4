"""Label tries and logits masking, without a model."""

from __future__ import annotations

import math

import pytest
import torch

from mtserve.errors import ValidationError
from mtserve.labels import LabelTrie, mask_logits

END = 99
VOCAB = {"1": [1], "10": [1, 0], "2": [2], "yes": [5], "no": [6], "not": [6, 7], "same": [8, 8]}


def encode(text):
    return VOCAB[text]


def test_prefix_labels_end_with_the_end_token():
    trie = LabelTrie.build(["1", "10", "2"], ["1", "10", "2"], encode, END)
    assert trie.paths == ((1, END), (1, 0), (2,))
    assert trie.allowed_next(()) == {1, 2}
    assert trie.allowed_next((1,)) == {END, 0}
    assert trie.allowed_next((1, 0)) == set()
    assert trie.complete((1, END)) == "1" and trie.complete((1,)) is None
    assert not trie.single_token


def test_single_distinct_tokens_need_no_end_token():
    trie = LabelTrie.build(["yes", "no"], ["yes", "no"], encode, END)
    assert trie.paths == ((5,), (6,)) and trie.single_token


def test_labels_that_tokenize_identically_are_refused():
    vocab = {"Yes": [5], "yes": [5]}
    with pytest.raises(ValidationError, match=r"labels\[1\].verbalizer: tokenizes to the same ids as labels\[0\]"):
        LabelTrie.build(["a", "b"], ["Yes", "yes"], vocab.__getitem__, END)


def test_nfc_equivalent_verbalizers_collide_on_qwen2(qwen2_tok):
    # "café" precomposed and decomposed are different strings but the same
    # tokens after Qwen2's NFC normalization: indistinguishable, so refused.
    enc = lambda s: qwen2_tok(s, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    with pytest.raises(ValidationError, match="cannot be told apart"):
        LabelTrie.build(["a", "b"], ["caf\u00e9", "cafe\u0301"], enc, END)


def test_mask_logits_allows_only_trie_tokens():
    logits = torch.randn(10)
    masked = mask_logits(logits, {2, 5})
    assert torch.isfinite(masked).nonzero().flatten().tolist() == [2, 5]
    assert masked[2] == logits[2] and masked[5] == logits[5]
    probs = torch.softmax(masked, -1)
    assert math.isclose(float(probs.sum()), 1.0, rel_tol=1e-6)


def test_constrained_greedy_walk_always_ends_on_a_label():
    trie = LabelTrie.build(["1", "10", "2", "not", "no"], ["1", "10", "2", "not", "no"], encode, END)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        prefix: tuple[int, ...] = ()
        while trie.allowed_next(prefix):
            logits = torch.randn(128, generator=gen)
            prefix += (int(mask_logits(logits, trie.allowed_next(prefix)).argmax()),)
        assert trie.complete(prefix) is not None
