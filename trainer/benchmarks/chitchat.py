"""chitchat-dataset: the BYU PCC "Chit Chat Challenge" conversations (English,
two students chatting online, 7,168 conversations).

Source: `chitchat_dataset/dataset.json`, a JSON object
{conversation id: {"messages": [[{"text", "timestamp", "sender"}, ...], ...],
"ratings": {"witty", "upbeat", "interesting"}, "start", "prompt"}}. Each inner
list of "messages" is a run of consecutive messages by one sender: it becomes
one turn (its messages joined by a space). 5,988 conversations carry
"ratings": ONE integer 1-10 per dimension (witty, upbeat, interesting) for the
conversation, not three raters' scores; 1,180 carry none.

Speakers: the input schema knows agent/customer/system only, so the first
sender of a conversation is written as "customer" and the other as "agent"
(peer-to-peer chat; the names only mark who is who).

Splits: by a hash of the conversation id, 70/15/15, shared by both tasks, so a
conversation never crosses splits and no chat-interesting test conversation
is a next-utterance training conversation.

chat-interesting (ordinal, conversation input, channel im): label = the
"interesting" rating bucketed 1-6 / 7-8 / 9 / 10. Aggregation: the three
ratings are different questions about the same conversation, so the label
uses the "interesting" rating alone (the brief's "mean, rounded" would mix in
wittiness and upbeatness; they correlate 0.76-0.84 with it); the three
together only serve to detect untouched forms: a conversation whose three
ratings are all exactly 5 (the form's default) is dropped (2,920 of 5,988).
Also dropped: unrated conversations, conversations with one sender (the
partner never answered) and with fewer than 4 turns.

next-utterance (binary, text pair): Text A = the last (up to) 3 turns before
a turn, one per line as "Speaker 1: ..." / "Speaker 2: ...", where Speaker 2
is the one who speaks next; Text B = the true next turn (yes) or a turn drawn
at random from another conversation of the same split and unlike any turn
of this one (no). (A text-pair line has no field for the conversation id, so
the examples do not carry it.) Every
conversation with two senders and at least 3 turns is used (ratings play no
part, so unrated and all-5 conversations are in); positions need at least 2
turns of context and a next turn of at least 4 words (short replies such as
"haha" or "yeah" fit any context); at most 3 positions per conversation, picked
by a seeded hash, each giving one yes and one no example.
"""

from __future__ import annotations

import json
import random
from typing import Any

from trainer.benchmarks.common import (
    Candidate,
    Drops,
    TaskData,
    clip,
    finalize,
    hash_split,
    hash_unit,
    norm_key,
    one_line,
    package_dir,
    package_version,
    sha256_file,
)

DISTRIBUTION, MODULE = "chitchat-dataset", "chitchat_dataset"
DATA = "dataset.json"
FRACTIONS = (0.7, 0.15, 0.15)
RATING_FIELDS = ("witty", "upbeat", "interesting")
DEFAULT_RATING = 5
MIN_TURNS_INTERESTING = 4
BUCKETS = (("1-6", 1, 6), ("7-8", 7, 8), ("9", 9, 9), ("10", 10, 10))
CONTEXT_TURNS = 3
MIN_CONTEXT_TURNS = 2
MIN_NEXT_WORDS = 4
POSITIONS_PER_CONVERSATION = 3
MAX_TURN_CHARS = 1000
SPEAKERS = ("customer", "agent")  # first sender, second sender


def load_raw() -> dict[str, Any]:
    path = package_dir(MODULE, DISTRIBUTION) / DATA
    if not path.exists():
        raise FileNotFoundError(f"{DISTRIBUTION}: expected data file {path} is missing")
    with open(path, encoding="utf-8") as fp:
        return json.load(fp)


def source_info() -> dict[str, Any]:
    path = package_dir(MODULE, DISTRIBUTION) / DATA
    return {
        "package": DISTRIBUTION,
        "version": package_version(DISTRIBUTION),
        "files": [f"{MODULE}/{DATA}"],
        "sha256": sha256_file(path),
    }


def conversation_split(conversation_id: str, seed: int) -> str:
    return hash_split(f"chitchat:{conversation_id}", FRACTIONS, seed)


def bucket(rating: int) -> str:
    for name, lo, hi in BUCKETS:
        if lo <= rating <= hi:
            return name
    raise ValueError(f"{DISTRIBUTION}: interesting rating {rating!r} is outside 1-10")


def turns_of(conv: dict[str, Any]) -> tuple[list[tuple[int, str]], int]:
    """[(speaker index, text)] with runs by one sender merged, empty messages
    skipped; and the number of distinct senders."""
    senders: dict[str, int] = {}
    turns: list[tuple[int, str]] = []
    for run in conv.get("messages") or []:
        texts = [one_line(m.get("text") or "") for m in run]
        text = " ".join(t for t in texts if t)
        if not text:
            continue
        sender = run[0].get("sender")
        idx = senders.setdefault(sender, len(senders))
        if turns and turns[-1][0] == idx:
            turns[-1] = (idx, turns[-1][1] + " " + text)
        else:
            turns.append((idx, text))
    return turns, len(senders)


def is_default_rating(ratings: dict[str, Any]) -> bool:
    return all(ratings.get(f) == DEFAULT_RATING for f in RATING_FIELDS)


def build(seed: int) -> list[TaskData]:
    data = load_raw()
    conversations = []  # (id, turns, n_senders, ratings or None), in id order
    for cid in sorted(data):
        turns, n_senders = turns_of(data[cid])
        conversations.append((cid, turns, n_senders, data[cid].get("ratings")))
    return [_interesting(conversations, seed), _next_utterance(conversations, seed)]


def _interesting(conversations: list, seed: int) -> TaskData:
    drops = Drops()
    candidates = []
    clipped = 0
    for cid, turns, n_senders, ratings in conversations:
        if not ratings:
            drops.add("unrated")
            continue
        if is_default_rating(ratings):
            drops.add("default_ratings_all_5")
            continue
        if n_senders < 2:
            drops.add("single_speaker")
            continue
        if len(turns) < MIN_TURNS_INTERESTING:
            drops.add("too_few_turns")
            continue
        label = bucket(int(ratings["interesting"]))
        out_turns = []
        for idx, text in turns:
            text, was_clipped = clip(text, MAX_TURN_CHARS)
            clipped += was_clipped
            out_turns.append({"speaker": SPEAKERS[min(idx, 1)], "text": text})
        key = norm_key("\n".join(f"{t['speaker']}: {t['text']}" for t in out_turns))
        candidates.append(Candidate(
            key=key,
            record={"conversation_id": cid, "channel": "im", "turns": out_turns, "label": label},
            answer=label,
            split=conversation_split(cid, seed),
        ))
    splits = finalize("chat-interesting", candidates, drops, seed=seed)
    return TaskData("chat-interesting", splits, drops, modified={"turns_clipped": clipped}, notes=[
        "label = the 'interesting' rating (1-10) bucketed 1-6/7-8/9/10; witty and upbeat are only used to spot all-5 defaults",
        "first sender -> customer, second -> agent; splits by hash of conversation id (70/15/15), shared with next-utterance",
    ])


def _render_context(turns: list[tuple[int, str]], responder: int) -> str:
    return "\n".join(f"Speaker {2 if idx == responder else 1}: {text}" for idx, text in turns)


def _next_utterance(conversations: list, seed: int) -> TaskData:
    drops = Drops()
    eligible = []
    for cid, turns, n_senders, _ in conversations:
        if n_senders < 2:
            drops.add("conversations_single_speaker")
        elif len(turns) < MIN_CONTEXT_TURNS + 1:
            drops.add("conversations_too_short")
        else:
            clipped = [(idx, clip(text, MAX_TURN_CHARS)[0]) for idx, text in turns]
            eligible.append((cid, clipped, conversation_split(cid, seed)))

    # negatives come from other conversations of the same split
    pools: dict[str, list[tuple[str, str]]] = {"train": [], "dev": [], "test": []}
    for cid, turns, split in eligible:
        for _, text in turns:
            if len(text.split()) >= MIN_NEXT_WORDS:
                pools[split].append((cid, text))

    candidates = []
    not_sampled = 0
    for cid, turns, split in eligible:
        positions = []
        for i in range(MIN_CONTEXT_TURNS, len(turns)):
            if len(turns[i][1].split()) < MIN_NEXT_WORDS:
                drops.add("positions_next_turn_too_short")
            else:
                positions.append(i)
        positions.sort(key=lambda i: hash_unit(seed, "position", cid, i))
        not_sampled += max(0, len(positions) - POSITIONS_PER_CONVERSATION)
        pool = pools[split]
        own = {norm_key(text) for _, text in turns}
        for i in sorted(positions[:POSITIONS_PER_CONVERSATION]):
            responder, true_next = turns[i]
            context = _render_context(turns[max(0, i - CONTEXT_TURNS):i], responder)
            rng = random.Random(int(hash_unit(seed, "negative", cid, i) * 2**52))
            for _ in range(1000):
                other_cid, negative = pool[rng.randrange(len(pool))]
                if other_cid != cid and norm_key(negative) not in own:
                    break
            else:  # pragma: no cover - a split pool holds thousands of turns
                raise RuntimeError(f"next-utterance: no negative found for {cid} in {split}")
            for label, candidate in (("yes", true_next), ("no", negative)):
                candidates.append(Candidate(
                    key=norm_key(context) + "\x1f" + norm_key(candidate),
                    record={"text": context, "text_b": candidate, "channel": "im", "label": label},
                    answer=label,
                    split=split,
                ))
    splits = finalize("next-utterance", candidates, drops, seed=seed)
    return TaskData("next-utterance", splits, drops, subsampled={"positions_over_per_conversation_limit": not_sampled}, notes=[
        (f"context = last {CONTEXT_TURNS} turns before a turn ('Speaker 2' speaks next); yes = true next turn, "
        "no = a random turn of another conversation in the same split"),
        (f"at most {POSITIONS_PER_CONVERSATION} positions per conversation, next turn >= {MIN_NEXT_WORDS} words; "
        "drop reasons starting with conversations_/positions_ count conversations/positions, not examples; "
        "'subsampled' counts usable positions left out by the per-conversation limit"),
        "splits by hash of conversation id (70/15/15), shared with chat-interesting",
    ])
