"""Constrained label decoding over a local transformers model.

A batch of requests (any mix of tasks and inputs) is scored in two levels:

    level 1  each distinct input's prefix            one forward pass, left-padded
                                                     (inputs of like length together)
    level 2  a token tree per prefix: the questions asked of it and, under each
             question, its label paths (teacher forced), merged where they
             share tokens; one row per tree, extending the prefix's cache row

so a conversation scored on 17 tasks pays for its prefix once, and its
questions and label paths pay once for the tokens they share: the 7
questions of a multi-label task share their instruction and branch only at
the label's name, the 34 sentence labels of a many-label task share their
first words. A tree is one packed row: each token's position is its depth
below the prefix and a tree-shaped attention mask lets it see the prefix,
its ancestors and itself, so there is one copy of the prefix's keys and
values per tree, whatever the number of questions, and no padding between
questions. A prefix asked one question (one task that is not multi-label,
and nothing else on that input) is run with its question in level 1, as one
sequence, so a lone request with one-token labels costs one forward pass;
its tree holds only its label paths.

Label probabilities are exact: the product of the token probabilities along
each label's path, renormalized over the task's labels; when every label is
one distinct token, the question's pass alone decides. Generation tasks
decode greedily from the question's pass until the end-of-answer token or
their bound.

Rows of a pass are padded, so a row's cache may hold padding; attention
masks mark it and positions come from the mask (level 1) or the tree depth
(level 2), so a row's result does not depend on what else is in the batch
(tests check alone vs. mixed batches, and the tree against a plain pass per
label path, to 1e-4).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import torch
from transformers import DynamicCache
from transformers.cache_utils import CacheLayerMixin, DynamicLayer

from mtserve.errors import MtserveError
from mtserve.inputs import Input, check_task_accepts, validate_input
from mtserve.labels import LabelTrie
from mtserve.predictions import LabelScore, Prediction, Request
from mtserve.prompt import DEFAULT_STYLE, MULTILABEL_NO, MULTILABEL_YES, PromptRenderer, PromptStyle, RenderedInput
from mtserve.tasks import Label, Task, Taxonomy, TruncationPolicy

__all__ = ["Engine", "LabelScore", "Prediction", "Request", "assemble_prediction", "decode_answer", "label_distribution", "label_verbalizers"]

log = logging.getLogger(__name__)


@dataclass
class _Query:
    """One suffix to score: a request's task, or one label of a multi-label task."""

    request: int
    prefix: int  # index into the distinct prefixes
    suffix: tuple[int, ...]
    trie: LabelTrie | None  # None: generation
    max_new_tokens: int = 0
    step_logprobs: list[torch.Tensor] = field(default_factory=list)  # per label path: log p of each path token
    generated: list[int] = field(default_factory=list)


class _Common(TypedDict):
    """The Prediction fields every kind of task fills the same way."""

    task: str
    task_version: int | None
    prompt_tokens: int
    truncated: bool


@dataclass
class _Tree:
    """A token tree that extends one cached level-1 row (`row`): questions and
    their label paths, merged where they share leading tokens. Node -1 is the
    row's last cached token (a lone question's end: its logits are level 1's)."""

    row: int
    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)  # 0 for a child of the cached row
    # (query, label index, the node whose next-token log-probs give each path token)
    reads: list[tuple[_Query, int, list[int]]] = field(default_factory=list)
    _children: dict[tuple[int, int], int] = field(default_factory=dict)

    def add(self, parent: int, tokens: Sequence[int]) -> list[int]:
        """The nodes of `tokens` below `parent`, reusing nodes already there."""
        nodes = []
        for tok in tokens:
            node = self._children.get((parent, tok))
            if node is None:
                node = len(self.tokens)
                self._children[(parent, tok)] = node
                self.tokens.append(tok)
                self.parents.append(parent)
                self.depths.append(0 if parent < 0 else self.depths[parent] + 1)
            nodes.append(node)
            parent = node
        return nodes

    def ask(self, q: _Query, suffix: Sequence[int]) -> None:
        """A question (its suffix; empty when level 1 ran it) and its label paths."""
        end = (self.add(-1, suffix) or [-1])[-1]
        q.step_logprobs = [torch.empty(0)] * len(q.trie.paths)  # type: ignore[union-attr]
        for j, path in enumerate(q.trie.paths):  # type: ignore[union-attr]
            self.reads.append((q, j, [end] + self.add(end, path[:-1])))

    def grows_by(self, q: _Query, suffix: Sequence[int]) -> int:
        """How many nodes ask(q, suffix) would add."""
        new: dict[tuple[int, int], int] = {}  # nodes it would add, numbered on from the tree's

        def walk(parent: int, tokens: Sequence[int]) -> int:
            for tok in tokens:
                node = self._children.get((parent, tok))
                parent = node if node is not None else new.setdefault((parent, tok), len(self.tokens) + len(new))
            return parent

        end = walk(-1, suffix)
        for path in q.trie.paths:  # type: ignore[union-attr]
            walk(end, path[:-1])
        return len(new)

    def read_nodes(self) -> set[int]:
        return {node for _, _, nodes in self.reads for node in nodes}

    def visible(self) -> torch.Tensor:
        """[nodes, nodes]: True where the row's node sees the column's (an ancestor or itself)."""
        n = len(self.tokens)
        sees = torch.zeros((n, n), dtype=torch.bool)
        for node, parent in enumerate(self.parents):  # a parent always precedes its children
            if parent >= 0:
                sees[node] = sees[parent]
            sees[node, node] = True
        return sees

    def fill(self, first: torch.Tensor, logp: torch.Tensor | None, column: dict[int, int]) -> None:
        """Each query's label-path token log-probs, from level 1's `first`
        (node -1) and this tree's pass (`logp` rows by `column`)."""
        for q, j, nodes in self.reads:
            path = q.trie.paths[j]  # type: ignore[union-attr]
            assert logp is not None or all(node < 0 for node in nodes)
            steps = [first[tok] if node < 0 else logp[column[node], tok] for node, tok in zip(nodes, path)]  # type: ignore[index]
            q.step_logprobs[j] = torch.stack(steps)


def _plant(row: int, asked: Sequence[tuple[_Query, Sequence[int]]], max_tokens: int) -> list[_Tree]:
    """The trees of one level-1 row: its questions in order, a new tree when
    the next question would take the current one past max_tokens (counted
    with sharing; a bigger question is a tree of its own)."""
    trees: list[_Tree] = []
    for q, suffix in asked:
        assert q.trie is not None  # classification questions only
        if not trees or (trees[-1].tokens and len(trees[-1].tokens) + trees[-1].grows_by(q, suffix) > max_tokens):
            trees.append(_Tree(row))
        trees[-1].ask(q, suffix)
    return trees


# A pass computes its padding like real tokens: rows (level 1's prefixes,
# level 2's trees) share a pass only while padding stays under this fraction
# of their own tokens. On a CPU a wider pass gains too little to pay for more.
MAX_PADDING = 0.25


class Engine:
    """Scores requests on one loaded model. Thread-safe: calls are serialized,
    because one forward pass already uses every core (or the whole GPU)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        policy: TruncationPolicy | None = None,
        *,
        max_batch_tokens: int = 8192,
        max_tree_tokens: int = 512,
        max_padding: float | None = MAX_PADDING,
        style: PromptStyle = DEFAULT_STYLE,
        name: str = "",
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        # A trained checkpoint's own prompt style (its manifest's prompt_style): what it learned to answer.
        self.renderer = PromptRenderer(tokenizer, policy, style=style)
        self.max_batch_tokens = max_batch_tokens
        # A tree's attention is dense over its row (a mask, not a sparse
        # kernel), so its cost grows with tokens x (prefix + tokens): trees are
        # kept to this many tokens, several per prefix when its questions need more.
        self.max_tree_tokens = max_tree_tokens
        # None: rows share a pass whatever their padding (for hardware where a
        # wide pass costs little more than a narrow one, e.g. a GPU).
        self.max_padding = max_padding
        self.name = name
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.renderer.end_of_answer_id
        self._tries: OrderedDict[tuple[str, Task | None], LabelTrie] = OrderedDict()
        self._lock = threading.RLock()  # re-entrant: predict() calls trie()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- label tries, one per task version -----------------------------------------
    def trie(self, task: Task) -> LabelTrie:
        """The task's label trie (yes/no for multi-label questions), built once
        per task definition; refuses verbalizers the tokenizer cannot tell apart."""
        with self._lock:
            return self._trie(task)

    def _trie(self, task: Task) -> LabelTrie:
        key = ("multilabel", None) if task.taxonomy is Taxonomy.MULTILABEL else (task.name, task)
        trie = self._tries.get(key)
        if trie is None:
            names, verbs = label_verbalizers(task)
            trie = LabelTrie.build(names, verbs, self.renderer.encode_text, self.renderer.end_of_answer_id, f"task({task.name}).labels")
            self._tries[key] = trie
            while len(self._tries) > 4096:
                self._tries.popitem(last=False)
        return trie

    def validate_task(self, task: Task) -> None:
        """Checks that need the tokenizer (label collisions); run at load time."""
        if not task.is_generation:
            self.trie(task)

    # -- the public call ---------------------------------------------------------
    def predict(self, requests: Sequence[Request]) -> list[Prediction | MtserveError]:
        """Score a batch; a bad request gets its error in its slot, the others are scored."""
        with self._lock, torch.inference_mode():
            return self._predict(list(requests))

    def _predict(self, requests: list[Request]) -> list[Prediction | MtserveError]:
        results: list[Prediction | MtserveError | None] = [None] * len(requests)
        prefixes: dict[tuple[Input, bool], int] = {}
        rendered: list[RenderedInput] = []
        queries: list[_Query] = []
        per_request: dict[int, list[_Query]] = {}
        for i, req in enumerate(requests):
            try:
                validate_input(req.input)
                check_task_accepts(req.task, req.input)
                key = (req.input, req.truncate)
                if key not in prefixes:
                    prefixes[key] = len(rendered)
                    rendered.append(self.renderer.render_input(req.input, truncate=req.truncate))
                p = prefixes[key]
                asks: Sequence[Label | None] = req.task.labels if req.task.taxonomy is Taxonomy.MULTILABEL else (None,)
                mine = []
                for ask in asks:
                    seg = self.renderer.render(req.task, req.input, ask=ask, rendered_input=rendered[p])
                    trie = None if req.task.is_generation else self.trie(req.task)
                    mine.append(_Query(i, p, seg.suffix, trie, req.task.max_new_tokens if trie is None else 0))
                queries += mine
                per_request[i] = mine
            except MtserveError as exc:
                results[i] = exc
            except Exception as exc:
                log.error("cannot prepare request %d (task %s)", i, req.task.name, exc_info=exc)
                results[i] = MtserveError(f"task {req.task.name!r}: the request could not be prepared ({type(exc).__name__})")
        self._run(rendered, queries)
        for i, mine in per_request.items():
            results[i] = self._prediction(requests[i], rendered[mine[0].prefix], mine)
        return results  # type: ignore[return-value]

    # -- assembling answers --------------------------------------------------------
    def _prediction(self, req: Request, rin: RenderedInput, queries: list[_Query]) -> Prediction:
        prompt_tokens = len(rin.ids) + max(len(q.suffix) for q in queries)
        if req.task.is_generation:
            text = decode_answer(self.tokenizer, queries[0].generated, self.renderer.end_of_answer_id)
            return assemble_prediction(req.task, prompt_tokens=prompt_tokens, truncated=rin.truncated, text=text)
        # Each label path's total: its token log-probabilities summed (in float32, then widened).
        totals = [[float(lp.sum()) for lp in q.step_logprobs] for q in queries]
        return assemble_prediction(req.task, prompt_tokens=prompt_tokens, truncated=rin.truncated, label_logprobs=totals)

    # -- the forward passes ---------------------------------------------------------
    def _run(self, rendered: list[RenderedInput], queries: list[_Query]) -> None:
        if not queries:
            return
        by_prefix: dict[int, list[_Query]] = {}
        for q in queries:
            by_prefix.setdefault(q.prefix, []).append(q)
        # Level 1 rows: a prefix asked one question is run with its suffix, as one sequence.
        rows = [(p, rendered[p].ids + (qs[0].suffix if len(qs) == 1 else ())) for p, qs in by_prefix.items()]
        rows.sort(key=lambda row: len(row[1]))
        for group in _pack([len(ids) for _, ids in rows], self.max_batch_tokens, max_padding=self.max_padding):
            prefixes = [rows[k][0] for k in group]
            last, cache, mask = self._forward_prefixes([rows[k][1] for k in group])
            trees: list[_Tree] = []
            lone_gen: list[int] = []
            shared_gen: dict[int, list[_Query]] = {}
            for r, p in enumerate(prefixes):
                qs = by_prefix[p]
                if len(qs) == 1 and qs[0].trie is None:
                    lone_gen.append(r)
                    continue
                asked = [(q, () if len(qs) == 1 else q.suffix) for q in qs if q.trie is not None]
                trees += _plant(r, asked, self.max_tree_tokens)
                if len(qs) > 1 and any(q.trie is None for q in qs):
                    shared_gen[r] = [q for q in qs if q.trie is None]
            first = torch.log_softmax(last.float(), dim=-1)  # lone rows: their question's next token
            self._score_trees(trees, first, cache, mask)
            if lone_gen:
                picked = torch.tensor(lone_gen, device=self.device)
                self._generate([by_prefix[prefixes[r]][0] for r in lone_gen], first[lone_gen], _select(cache, picked), mask.index_select(0, picked))
            if shared_gen:
                self._generate_after_questions(cache, mask, shared_gen)

    def _score_trees(self, trees: list[_Tree], first: torch.Tensor, cache: DynamicCache, mask: torch.Tensor) -> None:
        """Level 2: every tree as one row extending its prefix's cache row, the
        trees batched within the token budget; fills each query's path log-probs."""
        # Longest first, so trees of like size share a batch and little padding is computed.
        runnable = sorted((t for t in trees if t.tokens), key=lambda t: len(t.tokens), reverse=True)
        for tree in trees:
            if not tree.tokens:  # a lone question whose labels are one token each: level 1 decided
                tree.fill(first[tree.row], None, {})
        sizes = [len(t.tokens) for t in runnable]
        for chunk in _pack(sizes, self.max_batch_tokens, fixed=mask.shape[1], max_padding=self.max_padding):
            batch = [runnable[k] for k in chunk]
            logp, column = self._forward_trees(batch, cache, mask)
            for b, tree in enumerate(batch):
                tree.fill(first[tree.row], logp[b], column)

    def _forward_trees(self, trees: list[_Tree], cache: DynamicCache, mask: torch.Tensor) -> tuple[torch.Tensor, dict[int, int]]:
        """One pass over right-padded tree rows, each extending its prefix's
        cache row. Returns the log-probabilities at the tree positions some
        label path reads ([trees, kept, vocab]) and position -> kept column."""
        n, width = max(len(t.tokens) for t in trees), mask.shape[1]
        parents = torch.tensor([t.row for t in trees], device=self.device)
        past = mask.index_select(0, parents).bool()
        ids = torch.full((len(trees), n), self.pad_id, dtype=torch.long)
        positions = torch.zeros((len(trees), n), dtype=torch.long)
        # [rows, 1, query, key]: True where a tree position may attend. Padding
        # positions see only themselves, so no row of the softmax is empty.
        attend = torch.zeros((len(trees), 1, n, width + n), dtype=torch.bool)
        attend[:, 0, :, width:] = torch.eye(n, dtype=torch.bool)
        for b, tree in enumerate(trees):
            k = len(tree.tokens)
            ids[b, :k] = torch.tensor(tree.tokens)
            positions[b, :k] = int(past[b].sum()) + torch.tensor(tree.depths)
            attend[b, 0, :k, :width] = past[b].cpu()
            attend[b, 0, :k, width : width + k] = tree.visible()
        keep = sorted({node for t in trees for node in t.read_nodes() if node >= 0})
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=attend.to(self.device),
            position_ids=positions.to(self.device),
            cache=_rows_view(cache, parents),
            use_cache=True,
            logits_to_keep=torch.tensor(keep, device=self.device),
        )
        return torch.log_softmax(out.logits.float(), dim=-1), {node: c for c, node in enumerate(keep)}

    def _generate_after_questions(self, cache: DynamicCache, mask: torch.Tensor, asked: dict[int, list[_Query]]) -> None:
        """Generation questions of shared prefixes: each a row extending its
        prefix's cache row (they need a cache of their own to decode on)."""
        queries = [q for qs in asked.values() for q in qs]
        row_of = [r for r, qs in asked.items() for _ in qs]
        for chunk in _pack([len(q.suffix) for q in queries], self.max_batch_tokens, fixed=mask.shape[1]):
            qs = [queries[k] for k in chunk]
            parents = torch.tensor([row_of[k] for k in chunk], device=self.device)
            logits, cache2, mask2 = self._extend(_select(cache, parents), mask.index_select(0, parents), [list(q.suffix) for q in qs], last_only=True)
            self._generate(qs, torch.log_softmax(logits.float(), dim=-1), cache2, mask2)

    def _generate(self, qs: list[_Query], first: torch.Tensor, cache: DynamicCache, mask: torch.Tensor) -> None:
        """Greedy decoding, all rows in one forward pass per step; finished rows leave the batch."""
        end = self.renderer.end_of_answer_id
        live = list(range(len(qs)))
        next_tokens = first.argmax(dim=-1).tolist()
        while live:
            still = []
            for k, tok in zip(live, next_tokens):
                q = qs[k]
                q.generated.append(tok)
                if tok != end and len(q.generated) < q.max_new_tokens:
                    still.append(k)
            if not still:
                return
            if len(still) < len(live):  # finished rows leave; a copy only then
                keep = torch.tensor([live.index(k) for k in still], device=self.device)
                cache, mask = _select(cache, keep), mask.index_select(0, keep)
            logits, cache, mask = self._extend(cache, mask, [[qs[k].generated[-1]] for k in still], last_only=True)
            next_tokens = logits.argmax(dim=-1).tolist()
            live = still

    def _forward_prefixes(self, prefixes: list[tuple[int, ...]]) -> tuple[torch.Tensor, DynamicCache, torch.Tensor]:
        """Level 1: left-padded, so every row ends at the last column. Returns
        the logits there ([rows, vocab]: the answer's first token for a row
        that carries its question), the cache and the mask."""
        width = max(len(p) for p in prefixes)
        ids = torch.full((len(prefixes), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prefixes), width), dtype=torch.long)
        for r, p in enumerate(prefixes):
            ids[r, width - len(p):] = torch.tensor(p)
            mask[r, width - len(p):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = DynamicCache(config=self.model.config)
        # `cache=`: transformers 5.24's name (`past_key_values` is removed in 5.40).
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), cache=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1], cache, mask

    def _extend(
        self, cache: DynamicCache, mask: torch.Tensor, tokens: list[list[int]], *, last_only: bool = False
    ) -> tuple[torch.Tensor, DynamicCache, torch.Tensor]:
        """Append right-padded token rows to cached rows; returns the logits of
        the new positions ([rows, width, vocab]; with `last_only`, of each row's
        last real token: [rows, vocab]), the grown cache and the grown mask."""
        width = max(len(t) for t in tokens)
        ids = torch.full((len(tokens), width), self.pad_id, dtype=torch.long)
        new_mask = torch.zeros((len(tokens), width), dtype=torch.long)
        for r, t in enumerate(tokens):
            ids[r, : len(t)] = torch.tensor(t)
            new_mask[r, : len(t)] = 1
        full_mask = torch.cat([mask, new_mask.to(mask.device)], dim=1)
        positions = _positions(full_mask)[:, -width:]
        last = [len(t) - 1 for t in tokens]
        # Only the positions some row needs go through the vocabulary
        # projection: at level 2 that is one per row, not the whole suffix.
        keep = sorted(set(last)) if last_only else list(range(width))
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=full_mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=torch.tensor(keep, device=self.device),
        )
        logits = out.logits
        if last_only:
            column = {pos: k for k, pos in enumerate(keep)}
            logits = logits[torch.arange(len(tokens)), torch.tensor([column[p] for p in last])]
        return logits, out.cache, full_mask


def label_verbalizers(task: Task) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The names and verbalizers a task's answer is decoded over: its labels,
    or yes/no for a multi-label task (asked one label at a time)."""
    if task.taxonomy is Taxonomy.MULTILABEL:
        return (MULTILABEL_YES, MULTILABEL_NO), (MULTILABEL_YES, MULTILABEL_NO)
    return task.label_names, tuple(label.verbalizer for label in task.labels)


def decode_answer(tokenizer: Any, generated: Sequence[int], end_id: int) -> str:
    """The text of a generated answer. An answer cut by max_new_tokens (no end
    token) can stop inside a character that byte-level BPE splits over several
    tokens (most CJK characters, emoji); decoding would end it with U+FFFD, so
    that partial character is dropped."""
    ids = [t for t in generated if t != end_id]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if end_id not in generated:
        text = text.rstrip("\ufffd")
    return text.strip()


def label_distribution(totals: Sequence[float]) -> list[float]:
    """Renormalize the label paths' total log-probabilities over the label set
    (a softmax in float64)."""
    top = max(totals)
    weights = [math.exp(t - top) for t in totals]
    norm = sum(weights)
    return [w / norm for w in weights]


def assemble_prediction(
    task: Task,
    *,
    prompt_tokens: int,
    truncated: bool,
    label_logprobs: Sequence[Sequence[float]] = (),
    text: str | None = None,
) -> Prediction:
    """An answer from what a backend computed: for a classification task each
    query's label-path log-probabilities (one query for a single-answer
    task, in label order; one yes/no question per label for a multi-label
    task), for a generation task the text. Every backend ends here, so an
    answer means the same whichever backend computed it."""
    common: _Common = {"task": task.name, "task_version": task.version, "prompt_tokens": prompt_tokens, "truncated": truncated}
    if task.is_generation:
        return Prediction(label=None, labels=(), scores=(), text=text or "", **common)
    if task.taxonomy is Taxonomy.MULTILABEL:
        label_scores: list[LabelScore] = []
        for label, totals in zip(task.labels, label_logprobs, strict=True):
            p_yes, _ = label_distribution(totals)  # the yes/no trie: yes first
            label_scores.append(LabelScore(label.name, p_yes))
        chosen = tuple(s.label for s in label_scores if s.probability >= task.threshold)
        top = max(label_scores, key=lambda s: s.probability).label
        return Prediction(label=top, labels=chosen, scores=tuple(label_scores), **common)
    (totals,) = label_logprobs
    probs = label_distribution(totals)
    scores = tuple(LabelScore(name, p) for name, p in zip(task.label_names, probs, strict=True))
    top = max(scores, key=lambda s: s.probability).label
    expected: float | None = None
    if task.taxonomy is Taxonomy.ORDINAL:
        expected = sum(s.probability * _ordinal_value(label) for s, label in zip(scores, task.labels))
    return Prediction(label=top, labels=(top,), scores=scores, expected_value=expected, **common)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    # Position = number of real tokens before this one, so padding (left or in
    # the middle) never shifts a row's positions.
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _ordinal_value(label: Label) -> float:
    # parse_task (the only place Labels are built) refuses an ordinal label without a value.
    assert label.value is not None, f"ordinal label {label.name!r} has no value"
    return label.value


def _select(cache: DynamicCache, rows: torch.Tensor) -> DynamicCache:
    """A new cache holding the given rows (repeats allowed); the source is left intact."""
    out = DynamicCache()
    for i, layer in enumerate(cache.layers):
        # The models scored here are plain decoders: after the prefix pass every
        # layer is a filled key/value layer (no linear-attention or dummy layers).
        assert isinstance(layer, CacheLayerMixin) and layer.keys is not None and layer.values is not None
        out.update(layer.keys.index_select(0, rows), layer.values.index_select(0, rows), i)
    return out


class _RowsView(DynamicLayer):
    """One layer of a prefix cache seen through some of its rows (repeats
    allowed; None: all, in order), for a pass that reads the prefix and is not
    continued: `update` returns those rows' keys and values with the new
    tokens' appended, and keeps nothing. A tree pass is never decoded on, so a
    copy of the prefix cache for it (which generation needs, `_select`, as it
    grows its cache) only raised the peak: the copy, and then the copy grown
    by `DynamicLayer.update`'s concatenation, were two more prefix caches
    alive at the end of the pass. Here one layer's concatenation at a time is."""

    def __init__(self, source: CacheLayerMixin, rows: torch.Tensor | None):
        super().__init__()
        assert source.keys is not None and source.values is not None
        self.keys, self.values = source.keys, source.values  # read, never modified
        self.device, self.is_initialized, self.rows = source.keys.device, True, rows

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.keys, self.values
        assert keys is not None and values is not None  # set in __init__, never cleared
        if self.rows is not None:
            keys, values = keys.index_select(0, self.rows), values.index_select(0, self.rows)
        return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)


def _rows_view(cache: DynamicCache, rows: torch.Tensor) -> DynamicCache:
    """A cache reading the given rows of `cache`, which a pass leaves unchanged (see _RowsView)."""
    layers = cache.layers
    # Plain decoders only, as in _select: every layer a filled key/value layer.
    assert all(isinstance(layer, CacheLayerMixin) and layer.keys is not None for layer in layers)
    batch = layers[0].keys.shape[0] if layers else -1  # type: ignore[union-attr]
    in_order = rows.numel() == batch and torch.equal(rows, torch.arange(batch, device=rows.device))
    out = DynamicCache()
    out.layers = [_RowsView(layer, None if in_order else rows) for layer in layers]  # type: ignore[arg-type]
    return out


def _pack(lengths: Sequence[int], max_tokens: int, *, fixed: int = 0, max_padding: float | None = None) -> list[list[int]]:
    """Split row indices (kept in order) into batches whose padded size
    rows x (fixed + longest row) stays within max_tokens; a row longer than
    the budget runs alone. With `max_padding`, a batch also closes before its
    padding (rows x longest - the rows' own tokens) would pass that fraction
    of its own tokens: padding is computed like any token, and on a CPU a
    wide batch gains too little to pay for it."""
    batches: list[list[int]] = []
    current: list[int] = []
    longest = real = 0
    for k, n in enumerate(lengths):
        if current:
            width = max(longest, n)
            too_big = (fixed + width) * (len(current) + 1) > max_tokens
            too_padded = max_padding is not None and width * (len(current) + 1) > (1 + max_padding) * (real + n)
            if too_big or too_padded:
                batches.append(current)
                current, longest, real = [], 0, 0
        current.append(k)
        longest = max(longest, n)
        real += n
    if current:
        batches.append(current)
    return batches
