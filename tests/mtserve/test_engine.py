"""Constrained label decoding on tiny random models (Llama + SmolLM2
tokenizer, Qwen2 + Qwen2-vocabulary tokenizer)."""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mtserve.engine import MAX_PADDING, Engine, Prediction, Request, _pack, decode_answer
from mtserve.errors import MtserveError, ValidationError
from mtserve.inputs import Conversation, Speaker, Text, Turn
from mtserve.tasks import Channel, parse_task


def conv(channel=Channel.CALL, *texts):
    texts = texts or ("hello, my booking at the harbour hotel was cancelled", "sorry, let me check that for you")
    return Conversation(channel=channel, turns=tuple(Turn([Speaker.CUSTOMER, Speaker.AGENT][i % 2], t) for i, t in enumerate(texts)))


def mixed_requests(hotel):
    call, im = conv(Channel.CALL), conv(Channel.IM, "我的房间没有了!", "I am sorry 🙏", "can I get an invoice")
    email = Text("Please change my booking to next Friday.", Channel.EMAIL)
    review = Text("Clean room, rude staff, great location.", Channel.REVIEW)
    reqs = [Request(t, call) for t in hotel.tasks if t.applies_to(call.kind, call.channel)]
    reqs += [Request(hotel.task(n), im) for n in ("rc-i", "see", "csc")]
    reqs += [Request(hotel.task("ec"), email), Request(hotel.task("rtc"), review)]
    reqs = [Request(dataclasses.replace(r.task, max_new_tokens=6), r.input) if r.task.is_generation else r for r in reqs]
    return reqs


@pytest.fixture(scope="module", params=["llama", "qwen"])
def engine(request, hotel):
    loaded = request.getfixturevalue(f"tiny_{request.param}")
    return Engine(loaded.model, loaded.tokenizer, hotel.truncation)


def assert_same(a: Prediction, b: Prediction, tol=1e-5):
    assert a.label == b.label and a.labels == b.labels and a.text == b.text
    for x, y in zip(a.scores, b.scores):
        assert x.label == y.label and abs(x.probability - y.probability) <= tol, (a.task, x, y)


def test_alone_equals_mixed_batch(engine, hotel):
    reqs = mixed_requests(hotel)
    together = engine.predict(reqs)
    for req, mixed in zip(reqs, together):
        alone = engine.predict([req])[0]
        assert_same(alone, mixed)


def test_small_token_budget_chunks_without_changing_answers(engine, hotel):
    reqs = mixed_requests(hotel)
    big = engine.predict(reqs)
    small = Engine(engine.model, engine.tokenizer, hotel.truncation, max_batch_tokens=128).predict(reqs)
    for a, b in zip(big, small):
        assert_same(a, b)


def test_distributions_and_answers_are_valid(engine, hotel):
    for req, p in zip(mixed_requests(hotel), engine.predict(mixed_requests(hotel))):
        task = req.task
        assert p.task == task.name
        if task.is_generation:
            assert isinstance(p.text, str) and p.scores == ()
            continue
        assert [s.label for s in p.scores] == list(task.label_names)
        if task.taxonomy.value == "multilabel":
            assert all(0.0 < s.probability < 1.0 for s in p.scores)
            assert p.labels == tuple(s.label for s in p.scores if s.probability >= task.threshold)
        else:
            assert math.isclose(sum(s.probability for s in p.scores), 1.0, abs_tol=1e-9)
            assert p.label == max(p.scores, key=lambda s: s.probability).label
        if task.taxonomy.value == "ordinal":
            assert p.expected_value == pytest.approx(sum(s.probability * l.value for s, l in zip(p.scores, task.labels)))


def reference_distribution(engine, task, inp, ask=None):
    """Score every label path by one plain forward pass over prompt + path,
    no cache, no batching: what the engine must reproduce. For a multi-label
    task, the yes/no distribution of the label asked."""
    seg = engine.renderer.render(task, inp, ask=ask)
    trie = engine.trie(task)
    totals = []
    for path in trie.paths:
        ids = torch.tensor([list(seg.prompt) + list(path)])
        with torch.no_grad():
            logp = torch.log_softmax(engine.model(input_ids=ids).logits[0].double(), -1)
        start = len(seg.prompt) - 1
        totals.append(sum(float(logp[start + k, tok]) for k, tok in enumerate(path)))
    z = torch.softmax(torch.tensor(totals, dtype=torch.double), 0)
    return [float(v) for v in z]


def reference_text(engine, task, inp):
    """Greedy decoding by a plain forward pass over the whole sequence at every step, no cache."""
    ids = list(engine.renderer.render(task, inp).prompt)
    end, generated = engine.renderer.end_of_answer_id, []
    with torch.no_grad():
        while len(generated) < task.max_new_tokens:
            tok = int(engine.model(input_ids=torch.tensor([ids + generated])).logits[0, -1].argmax())
            generated.append(tok)
            if tok == end:
                break
    return decode_answer(engine.tokenizer, generated, end)


def reference_answer(engine, req):
    """What the no-cache, no-batching reference answers: the text of a
    generation task, else one probability per label (p(yes) per label for a
    multi-label task)."""
    task = req.task
    if task.is_generation:
        return reference_text(engine, task, req.input)
    if task.taxonomy.value == "multilabel":
        return [reference_distribution(engine, task, req.input, ask=label)[0] for label in task.labels]
    return reference_distribution(engine, task, req.input)


def assert_matches(req, p, want, tol=1e-4):
    """The same label (or text) as the reference, every probability within `tol`."""
    task = req.task
    if task.is_generation:
        assert p.text == want, task.name
        return
    if task.taxonomy.value == "multilabel":
        assert p.labels == tuple(label.name for label, q in zip(task.labels, want) if q >= task.threshold), task.name
    else:
        assert p.label == task.label_names[max(range(len(want)), key=want.__getitem__)], task.name
    assert [s.probability for s in p.scores] == pytest.approx(want, abs=tol), task.name


def many_label_task():
    """34 labels that are whole sentences sharing their first tokens: a deep label trie."""
    things = ["room", "bill", "breakfast", "booking", "staff", "pool", "parking", "wifi", "shower", "bed", "view", "lift",
              "minibar", "spa", "gym", "bar", "lobby"]
    labels = [{"name": f"{t}-{v}", "verbalizer": f"The {t} was {w}."} for t in things for v, w in (("good", "great"), ("bad", "not acceptable"))]
    # No {labels} in the instruction: the prompt stays short, the reference (a pass per path) cheap.
    return parse_task({"name": "aspect", "instruction": "Which sentence fits the review best?", "input_kind": "text",
                       "taxonomy": "multiclass", "channels": ["review"], "labels": labels})


def fast_path_requests(hotel):
    """Prefixes asked one question (the fast path) beside prefixes asked many (the tree), in one batch."""
    call, im = conv(Channel.CALL), conv(Channel.IM, "the key card stopped working", "I will send someone up")
    email = Text("Hello, we need 20 rooms for a wedding in June.", Channel.EMAIL)
    review, review2 = Text("Clean room, rude staff, great location.", Channel.REVIEW), Text("The lift was broken all week.", Channel.REVIEW)
    gen = dataclasses.replace(hotel.task("cs"), max_new_tokens=6)
    aspect = many_label_task()
    shared = [Request(t, call) for t in hotel.tasks if t.applies_to(call.kind, call.channel) and not t.is_generation]
    return [
        Request(hotel.task("see"), im),  # lone: one ordinal task, one-token labels
        *shared[:4],  # shared: several binary tasks on one call
        Request(hotel.task("ec"), email),  # lone: multi-token labels (level 3 extends level 1)
        Request(aspect, review),  # lone: 34 sentence labels
        Request(aspect, review2), Request(hotel.task("rtc"), review2),  # shared: the many-label task beside a multi-label one
        Request(gen, conv(Channel.IM, "can you summarise my stay?")),  # lone generation
        *shared[4:],
    ]


def test_fast_path_gives_the_reference_answers_alone_and_in_mixed_batches(engine, hotel):
    """Float32, to 1e-4: each request alone (its prefix asked one question: the
    fast path), all of them in one batch (lone and shared prefixes side by
    side, trees of several lengths), and that batch
    under token budgets that split every pass and cut each prefix's questions
    into trees of at most 16 tokens (a question bigger than that alone)."""
    reqs = fast_path_requests(hotel)
    mixed = engine.predict(reqs)
    small = Engine(engine.model, engine.tokenizer, hotel.truncation, max_batch_tokens=128, max_tree_tokens=16).predict(reqs)
    for req, in_batch, chunked in zip(reqs, mixed, small):
        want = reference_answer(engine, req)
        for p in (in_batch, chunked, engine.predict([req])[0]):
            assert_matches(req, p, want)


def test_a_lone_request_costs_one_forward_pass(tiny_llama, hotel):
    counting = CountingModel(tiny_llama.model)
    engine = Engine(counting, tiny_llama.tokenizer, hotel.truncation)
    call, email = conv(Channel.CALL), Text("Please change my booking to next Friday.", Channel.EMAIL)
    engine.predict([Request(hotel.task("rc-a"), call)])
    assert len(counting.calls) == 1  # prefix + question as one sequence; one-token labels decide there
    counting.calls.clear()
    engine.predict([Request(hotel.task("ec"), email)])
    assert len(counting.calls) == 2  # and the multi-token label paths extend it
    counting.calls.clear()
    engine.predict([Request(hotel.task("rc-a"), call), Request(hotel.task("ec"), email), Request(hotel.task("rc-i"), conv(Channel.IM))])
    assert len(counting.calls) == 2 and counting.calls[0][0] == 3  # three lone prefixes share the first pass


def test_multi_token_label_probabilities_are_exact(engine, hotel):
    task = hotel.task("ec")  # "booking change", "group booking", ...: several tokens each
    inp = Text("Hello, we need 20 rooms for a wedding in June.", Channel.EMAIL)
    assert not engine.trie(task).single_token
    got = [s.probability for s in engine.predict([Request(task, inp)])[0].scores]
    assert got == pytest.approx(reference_distribution(engine, task, inp), abs=1e-5)


def test_prefix_labels_1_and_10_are_distinguished(engine):
    task = parse_task({"name": "score", "instruction": "Score it: {labels}", "input_kind": "text", "taxonomy": "ordinal",
                       "channels": ["review"], "labels": [{"name": str(v), "value": v} for v in (1, 2, 10, 100)]})
    inp = Text("fine", Channel.REVIEW)
    trie = engine.trie(task)
    assert trie.paths[0][-1] == engine.renderer.end_of_answer_id  # "1" is a prefix of "10"
    got = [s.probability for s in engine.predict([Request(task, inp)])[0].scores]
    assert got == pytest.approx(reference_distribution(engine, task, inp), abs=1e-5)


class CountingModel(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.inner, self.calls = model, []
        self.tree_tokens = []  # (rows, width, real tokens) of each tree pass
        self.prefix_tokens = []  # the same of each level-1 pass
        self.config = model.config

    def forward(self, **kw):
        self.calls.append(tuple(kw["input_ids"].shape))
        mask = kw["attention_mask"]
        if mask.dim() == 4:
            rows, n = kw["input_ids"].shape
            self.tree_tokens.append((rows, n, int(mask[:, 0, :, : mask.shape[-1] - n].any(-1).sum())))
        elif kw.get("cache") is not None and kw["cache"].get_seq_length() == 0:  # a level-1 pass
            self.prefix_tokens.append((*kw["input_ids"].shape, int(mask.sum())))
        return self.inner(**kw)


def test_shared_prefix_runs_once_and_single_token_labels_need_no_third_pass(tiny_llama, hotel):
    counting = CountingModel(tiny_llama.model)
    engine = Engine(counting, tiny_llama.tokenizer, hotel.truncation)
    call = conv(Channel.CALL)
    binary = [Request(t, call) for t in hotel.tasks if t.applies_to(call.kind, call.channel) and t.taxonomy.value == "binary"]
    engine.predict(binary)
    # one prefix pass, then one row holding every question as a tree: the
    # questions' shared opening tokens once, no padding, nothing else
    assert len(counting.calls) == 2
    assert counting.calls[0][0] == 1 and counting.calls[1][0] == 1
    suffixes = [engine.renderer.render(r.task, call).suffix for r in binary]
    assert counting.calls[1][1] < sum(len(s) for s in suffixes)


def test_multi_label_questions_share_their_instruction_and_many_labels_their_words(tiny_llama, hotel):
    """The 7 questions of a multi-label task branch at the label's name; 34
    sentence labels that share their first words are one trie, not 34 paths."""
    counting = CountingModel(tiny_llama.model)
    engine = Engine(counting, tiny_llama.tokenizer, hotel.truncation)
    review = Text("Clean room, rude staff, great location.", Channel.REVIEW)
    task = hotel.task("rtc")
    engine.predict([Request(task, review)])
    questions = [engine.renderer.render(task, review, ask=label).suffix for label in task.labels]
    common = len(os.path.commonprefix(questions))  # the instruction, up to the label's name
    assert len(task.labels) >= 3 and common > 10
    assert counting.calls[1][1] <= common + sum(len(q) - common for q in questions)  # each question's tail once
    counting.calls.clear()
    aspect = many_label_task()
    engine.predict([Request(aspect, review)])
    paths = engine.trie(aspect).paths
    assert len(counting.calls) == 2 and counting.calls[1][0] == 1  # lone: level 1, then one tree of label paths
    assert counting.calls[1][1] < sum(len(p) - 1 for p in paths)


def test_every_task_of_a_conversation_is_one_tree_and_a_split_pays_no_padding(tiny_llama, hotel):
    """All applicable tasks of a call (the multi-label one included) fit one
    tree: one row, sized with sharing. With a small tree bound they split
    into trees, batched only while the padding stays within its bound."""
    counting = CountingModel(tiny_llama.model)
    call = conv(Channel.CALL)
    reqs = [Request(t, call) for t in hotel.tasks if t.applies_to(call.kind, call.channel) and not t.is_generation]
    reference = Engine(tiny_llama.model, tiny_llama.tokenizer, hotel.truncation).predict(reqs)
    Engine(counting, tiny_llama.tokenizer, hotel.truncation).predict(reqs)
    assert len(counting.calls) == 2 and counting.calls[1][0] == 1
    tree_tokens = counting.calls[1][1]
    counting.calls.clear()
    counting.tree_tokens.clear()
    split = Engine(counting, tiny_llama.tokenizer, hotel.truncation, max_tree_tokens=tree_tokens // 3).predict(reqs)
    assert sum(rows for rows, _, _ in counting.tree_tokens) >= 3  # split into trees
    # a tree pass's real tokens see the prefix; its padding sees only itself
    for rows, width, real in counting.tree_tokens:
        assert rows * width <= (1 + MAX_PADDING) * real
    for a, b in zip(reference, split):
        assert a.label == b.label
        assert all(abs(x.probability - y.probability) <= 1e-4 for x, y in zip(a.scores, b.scores))


def test_inputs_share_a_prefix_pass_only_while_its_padding_stays_bounded(tiny_llama, hotel):
    """Inputs of very different lengths in one call: the level-1 passes pay
    at most MAX_PADDING of their tokens in padding, and answers do not change."""
    counting = CountingModel(tiny_llama.model)
    turns = ["my booking at the harbour hotel was cancelled and nobody told me why"] * 12
    inputs = [conv(Channel.CALL, *turns[:n]) for n in (1, 2, 3, 6, 12)]
    reqs = [Request(hotel.task("rc-a"), inp) for inp in inputs] + [Request(hotel.task("csc"), inp) for inp in inputs]
    reference = [Engine(tiny_llama.model, tiny_llama.tokenizer, hotel.truncation).predict([r])[0] for r in reqs]
    got = Engine(counting, tiny_llama.tokenizer, hotel.truncation).predict(reqs)
    assert len(counting.prefix_tokens) >= 3  # 5 lengths from ~60 to ~300 tokens cannot share one pass
    for rows, width, real in counting.prefix_tokens:
        assert rows * width <= (1 + MAX_PADDING) * real
    for a, b in zip(reference, got):
        assert a.label == b.label
        assert all(abs(x.probability - y.probability) <= 1e-4 for x, y in zip(a.scores, b.scores))


def test_pack_closes_a_batch_before_its_padding_passes_the_bound():
    assert _pack([100, 90, 20], 10_000) == [[0, 1, 2]]
    assert _pack([100, 90, 20], 10_000, max_padding=0.25) == [[0, 1], [2]]  # 3 x 100 > 1.25 x 210
    assert _pack([100, 90], 300, fixed=60) == [[0], [1]]  # (60 + 100) x 2 > 300


def test_a_bad_request_does_not_sink_the_batch(engine, hotel):
    good = Request(hotel.task("rc-a"), conv(Channel.CALL))
    wrong_kind = Request(hotel.task("rc-a"), Text("hello"))
    wrong_channel = Request(hotel.task("rc-a"), conv(Channel.IM))
    out = engine.predict([good, wrong_kind, wrong_channel])
    assert isinstance(out[0], Prediction)
    assert isinstance(out[1], ValidationError) and "reads conversation input" in str(out[1])
    assert isinstance(out[2], ValidationError) and "applies to channels" in str(out[2])


def test_a_request_that_breaks_while_prepared_fails_alone(engine, hotel):
    """A task that slipped past validation (here: built by hand with a format
    spec the parser refuses) fails its own request, not the batch."""
    import dataclasses

    broken = dataclasses.replace(hotel.task("csa"), instruction="Answer {labels:d}.")
    good = Request(hotel.task("rc-a"), conv(Channel.CALL))
    out = engine.predict([good, Request(broken, conv(Channel.CALL)), good])
    assert isinstance(out[0], Prediction) and isinstance(out[2], Prediction)
    assert isinstance(out[1], MtserveError) and "task 'csa': the request could not be prepared (ValueError)" in str(out[1])


def test_scoring_uses_the_current_cache_argument(engine, hotel):
    """No deprecation from the model call: `past_key_values` is removed in
    transformers 5.40 (every scoring run printed its FutureWarning)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        out = engine.predict([Request(hotel.task("rc-a"), conv(Channel.CALL))])
    assert isinstance(out[0], Prediction)


def test_generation_stops_at_its_bound(engine, hotel):
    task = dataclasses.replace(hotel.task("cs"), max_new_tokens=3)
    p = engine.predict([Request(task, conv(Channel.IM))])[0]
    assert len(engine.tokenizer(p.text, add_special_tokens=False)["input_ids"]) <= 4


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_qwen"])
def test_an_answer_cut_inside_a_character_drops_the_partial_character(request, model):
    tokenizer = request.getfixturevalue(model).tokenizer
    full = "格林掌击哈登后，裁判都看不下了 🙏"
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    end = tokenizer.eos_token_id
    cut_inside = 0
    for k in range(1, len(ids) + 1):
        cut_inside += "\ufffd" in tokenizer.decode(ids[:k])
        text = decode_answer(tokenizer, ids[:k], end)
        assert "\ufffd" not in text and full.startswith(text), (k, text)
    assert cut_inside > 0  # the string does split characters over tokens, so the rule was exercised
    # A finished answer is decoded as it is, the end token left out.
    assert decode_answer(tokenizer, ids + [end], end) == full


LABEL_WORDS = st.sampled_from(
    ["1", "10", "100", "2", "yes", "yes please", "no", "not sure", "好", "好的", "很好", "très bien", "très", "ok 👍", "ok", "B-2", "b"]
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(LABEL_WORDS, min_size=2, max_size=6, unique_by=str.casefold), text=st.text(min_size=1, max_size=60))
def test_property_answer_is_a_label_and_probabilities_sum_to_one(engine, words, text):
    assume(text.strip())
    task = parse_task({"name": "prop", "instruction": "Pick one of {labels}.", "input_kind": "text", "taxonomy": "multiclass",
                       "channels": ["review"], "labels": [{"name": f"l{i}", "verbalizer": w} for i, w in enumerate(words)]})
    try:
        engine.trie(task)
    except ValidationError:
        assume(False)  # a tokenizer-level collision: refused, as it must be
    p = engine.predict([Request(task, Text(text, Channel.REVIEW))])[0]
    assert p.label in task.label_names
    assert math.isclose(sum(s.probability for s in p.scores), 1.0, abs_tol=1e-9)
