"""Evaluation metrics and their 95% confidence intervals. Pure functions.

Every metric is written as per-example *sufficient statistics* (a row of
numbers per example) and a `finalize` function of their column sums. The metric
of the whole set is ``finalize(sum of rows)``; the metric of a bootstrap
resample is ``finalize(w @ rows)`` where ``w[i]`` counts how often example i was
drawn. That one form makes every bootstrap a matrix product (fast, vectorised)
and lets a paired comparison (trainer.qualify) reuse the very same resample
weights for two systems scored on the same examples.

Metrics (n examples, gold g_i, prediction p_i):

    accuracy            (1/n) sum_i [p_i == g_i]        multi-label: exact set match
    exact match         (1/n) sum_i [norm(p_i) == norm(g_i)], norm = collapse white space
    ROUGE-L             (1/n) sum_i F_LCS(g_i, p_i), over `tokenize`d tokens (below)
    F1 of a class c     2 TP_c / (2 TP_c + FP_c + FN_c)      (= 2PR/(P+R); 0 when TP_c = 0)
    macro-F1            mean of F1_c over the classes that occur in gold or prediction
    micro-F1            2 sum TP_c / (2 sum TP_c + sum FP_c + sum FN_c)
    MAE                 (1/n) sum_i |e_i - v(g_i)|  (ordinal: expected value vs the gold label's value)

F1 with nothing to find and nothing found (no gold label, no predicted label at
all) is 1.0: the system made no mistake, and a 0/0 must not turn into a failed
qualification.

Intervals: percentile bootstrap over examples (B seeded resamples of n examples
with replacement; the interval is the 2.5th and 97.5th percentile of the B
resampled metrics), and for proportions also the Wilson score interval

    centre = (p + z^2/2n) / (1 + z^2/n),
    half   = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/(4n^2)),   z = 1.96 for 95%.

The bootstrap is hand-written, not scipy.stats.bootstrap: a library would draw other resamples and change every
committed interval, and would add scipy for one function; here one matrix of resample counts serves every metric and
the paired comparisons of trainer.qualify alike.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from mtserve.errors import ValidationError

# NormalDist().inv_cdf(0.975) is 1.9599639845400536, one ulp below this; the
# committed intervals were computed with this value, and a Wilson bound of 0
# successes comes out exactly 0.0 with it.
Z95 = 1.959963984540054
DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
DEFAULT_LEVEL = 0.95
# Resamples are drawn in chunks so that memory stays at chunk x n counts even
# for large dev sets; the chunk size is fixed so a seed always gives the same draw.
_CHUNK = 256



# -- tokenization and ROUGE-L --------------------------------------------------------

# Han ideographs (incl. extension A, compatibility, and the supplementary
# planes), kana. Hangul is written with spaces, so it stays word-based.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_TOKEN_RE = re.compile(f"[{_CJK}]|(?:(?![{_CJK}])[^\\W_])+")


def tokenize(text: str) -> list[str]:
    """Tokens for ROUGE: each CJK character is a token, each run of other
    letters/digits is a token; punctuation and white space separate and are
    dropped. Text is NFKC-normalised (full-width ASCII becomes ASCII) and
    case-folded. Word-based ROUGE tools drop non-ASCII text, which would score
    every Chinese pair as empty; this scores Chinese by characters and Latin
    text by words, and a mix of both correctly."""
    return _TOKEN_RE.findall(unicodedata.normalize("NFKC", text).casefold())


def lcs_length(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Length of the longest common subsequence, bit-parallel (Allison-Dix /
    Hyyro): bit i of V is 0 where row i of the DP table steps up; per token y
    of b, U = V & M[y], V = (V + U) | (V - U); the LCS is the count of 0 bits.
    Python's big integers make it O(|b|) big-int operations."""
    if not a or not b:
        return 0
    masks: dict[Hashable, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for tok in b:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - (v).bit_count()


def rouge_l(reference: str, candidate: str, beta: float = 1.0) -> float:
    """ROUGE-L F-measure of one pair (Lin 2004):
        R = LCS/|ref|, P = LCS/|cand|, F = (1 + b^2) R P / (R + b^2 P),
    with beta = 1 as in the rouge-score package. Two texts without tokens
    score 1.0 (identical); one empty side scores 0.0. Kept by hand rather than
    rouge-score's RougeScorer with this tokenizer: that scores two empty texts
    0.0, and would add nltk and absl-py for an O(n*m) LCS this does bit-parallel."""
    ref, cand = tokenize(reference), tokenize(candidate)
    if not ref and not cand:
        return 1.0
    lcs = lcs_length(ref, cand)
    if lcs == 0:
        return 0.0
    r, p = lcs / len(ref), lcs / len(cand)
    return (1 + beta**2) * r * p / (r + beta**2 * p)


def normalize_answer(text: str) -> str:
    """Exact match ignores leading/trailing and repeated white space only."""
    return " ".join(text.split())


def exact_match(reference: str, candidate: str | None) -> bool:
    return candidate is not None and normalize_answer(reference) == normalize_answer(candidate)


# -- sufficient statistics -----------------------------------------------------------


@dataclass(frozen=True)
class Statistic:
    """Per-example rows (n x k) and the metric as a function of their column
    sums (works on a (..., k) array of sums, returning (...))."""

    name: str
    rows: np.ndarray
    finalize: Callable[[np.ndarray, int], np.ndarray]
    proportion: bool = False  # each row is a single 0/1 success: Wilson applies

    @property
    def n(self) -> int:
        return int(self.rows.shape[0])

    def value(self) -> float:
        return float(self.finalize(self.rows.sum(axis=0), self.n))

    def select(self, index: np.ndarray | Sequence[int]) -> Statistic:
        """The same metric over a subset/reordering of the examples."""
        return Statistic(self.name, self.rows[np.asarray(index, dtype=int)], self.finalize, self.proportion)


def _mean(sums: np.ndarray, n: int) -> np.ndarray:
    return sums[..., 0] / n


def mean_statistic(name: str, values: Iterable[float], *, proportion: bool = False) -> Statistic:
    """A metric that is the mean of a per-example value (accuracy, exact
    match, ROUGE-L, absolute error)."""
    rows = np.asarray(list(values), dtype=np.float64).reshape(-1, 1)
    _check_n(rows.shape[0], name)
    return Statistic(name, rows, _mean, proportion)


_SET_TYPES = (tuple, list, set, frozenset)


def _as_set(value: Any) -> frozenset:
    """A gold/predicted answer as a set of labels: a label set stays one,
    a single label becomes a singleton, None (no prediction) the empty set."""
    if value is None:
        return frozenset()
    if isinstance(value, _SET_TYPES):
        return frozenset(value)
    return frozenset({value})


def _f1_rows(gold: Sequence[Any], pred: Sequence[Any], labels: Sequence[Hashable] | None) -> tuple[np.ndarray, int]:
    """Rows [TP_c..., FP_c..., FN_c...] per example; gold/pred may be label
    names (single-label), sets/tuples (multi-label), or None (no prediction)."""
    gold_sets = [_as_set(g) for g in gold]
    pred_sets = [_as_set(p) for p in pred]
    if labels is None:
        labels = sorted({x for s in gold_sets + pred_sets for x in s}, key=str)
    index = {label: j for j, label in enumerate(labels)}
    c = len(labels)
    g = np.zeros((len(gold_sets), c), dtype=np.float64)
    p = np.zeros((len(pred_sets), c), dtype=np.float64)
    for i, (gs, ps) in enumerate(zip(gold_sets, pred_sets)):
        for x in gs:
            if x not in index:
                raise ValidationError(f"gold[{i}]", f"is not one of the labels {list(labels)}", x)
            g[i, index[x]] = 1.0
        for x in ps:
            if x in index:  # a prediction outside the label set is only a miss
                p[i, index[x]] = 1.0
    return np.concatenate([g * p, (1 - g) * p, g * (1 - p)], axis=1), c


def _macro_f1(c: int) -> Callable[[np.ndarray, int], np.ndarray]:
    def finalize(sums: np.ndarray, n: int) -> np.ndarray:
        tp, fp, fn = sums[..., :c], sums[..., c : 2 * c], sums[..., 2 * c :]
        denom = 2 * tp + fp + fn
        present = denom > 0  # a class absent from gold and prediction does not count
        f1 = np.divide(2 * tp, denom, out=np.zeros_like(denom), where=present)
        k = present.sum(axis=-1)
        return np.where(k > 0, f1.sum(axis=-1) / np.maximum(k, 1), 1.0)

    return finalize


def _micro_f1(c: int) -> Callable[[np.ndarray, int], np.ndarray]:
    def finalize(sums: np.ndarray, n: int) -> np.ndarray:
        tp, fp, fn = sums[..., :c].sum(-1), sums[..., c : 2 * c].sum(-1), sums[..., 2 * c :].sum(-1)
        denom = 2 * tp + fp + fn
        return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1.0), 1.0)

    return finalize


def f1_statistic(
    gold: Sequence[Any], pred: Sequence[Any], labels: Sequence[Hashable] | None = None, *, average: str = "macro"
) -> Statistic:
    """Macro- or micro-F1 over `labels` (default: those seen in gold or pred)."""
    _check_same_length(gold, pred)
    _check_n(len(gold), f"{average}_f1")
    rows, c = _f1_rows(gold, pred, labels)
    if average == "macro":
        return Statistic("macro_f1", rows, _macro_f1(c))
    if average == "micro":
        return Statistic("micro_f1", rows, _micro_f1(c))
    raise ValidationError("average", "must be macro or micro", average)


def accuracy_statistic(gold: Sequence[Any], pred: Sequence[Any]) -> Statistic:
    """Single-label: label equality. Multi-label (sets/tuples): exact set match."""
    _check_same_length(gold, pred)
    same = [_as_set(g) == _as_set(p) if isinstance(g, _SET_TYPES) else g == p for g, p in zip(gold, pred)]
    return mean_statistic("accuracy", same, proportion=True)


def exact_match_statistic(references: Sequence[str], candidates: Sequence[str | None]) -> Statistic:
    _check_same_length(references, candidates)
    return mean_statistic("exact_match", (exact_match(r, c) for r, c in zip(references, candidates)), proportion=True)


def rouge_l_statistic(references: Sequence[str], candidates: Sequence[str | None]) -> Statistic:
    _check_same_length(references, candidates)
    return mean_statistic("rouge_l", (rouge_l(r, c or "") for r, c in zip(references, candidates)))


# -- point metrics (thin wrappers, for callers that want a number) ---------------------


def accuracy(gold: Sequence[Any], pred: Sequence[Any]) -> float:
    return accuracy_statistic(gold, pred).value()


def exact_set_accuracy(gold: Sequence[Iterable[str]], pred: Sequence[Iterable[str] | None]) -> float:
    """Multi-label accuracy: the predicted set equals the gold set."""
    return accuracy_statistic([tuple(g) for g in gold], [() if p is None else tuple(p) for p in pred]).value()


def macro_f1(gold: Sequence[Any], pred: Sequence[Any], labels: Sequence[Hashable] | None = None) -> float:
    return f1_statistic(gold, pred, labels, average="macro").value()


def micro_f1(gold: Sequence[Any], pred: Sequence[Any], labels: Sequence[Hashable] | None = None) -> float:
    return f1_statistic(gold, pred, labels, average="micro").value()


def mean_exact_match(references: Sequence[str], candidates: Sequence[str | None]) -> float:
    return exact_match_statistic(references, candidates).value()


def mean_rouge_l(references: Sequence[str], candidates: Sequence[str | None]) -> float:
    return rouge_l_statistic(references, candidates).value()


# -- intervals ---------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A metric with its interval. `low`/`high` are the percentile bootstrap
    interval; proportions also carry the Wilson interval."""

    value: float
    low: float
    high: float
    n: int
    level: float = DEFAULT_LEVEL
    method: str = "percentile bootstrap"
    wilson: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value, "low": self.low, "high": self.high, "n": self.n, "level": self.level, "method": self.method}
        if self.wilson is not None:
            out["wilson"] = list(self.wilson)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Estimate:
        w = data.get("wilson")
        return cls(
            value=float(data["value"]),
            low=float(data["low"]),
            high=float(data["high"]),
            n=int(data["n"]),
            level=float(data.get("level", DEFAULT_LEVEL)),
            method=str(data.get("method", "percentile bootstrap")),
            wilson=None if w is None else (float(w[0]), float(w[1])),
        )

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        """'94.0 (92.1-95.6)' at scale 100."""
        return f"{self.value * scale:.{digits}f} ({self.low * scale:.{digits}f}-{self.high * scale:.{digits}f})"


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (formula in the module docstring)."""
    _check_n(n, "wilson")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def resample_weights(n: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> Iterable[np.ndarray]:
    """Chunks of bootstrap count vectors: row b, column i = how many times
    example i is in resample b (each row sums to n). Seeded and deterministic."""
    _check_n(n, "bootstrap")
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_resamples:
        b = min(_CHUNK, n_resamples - done)
        idx = rng.integers(0, n, size=(b, n))
        flat = (idx + (np.arange(b) * n)[:, None]).ravel()
        yield np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)
        done += b


def bootstrap_distribution(
    statistics: Sequence[Statistic], *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
) -> list[np.ndarray]:
    """The B resampled values of each statistic, all from the SAME resamples
    (so statistics over the same examples, in the same order, are paired)."""
    if not statistics:
        return []
    n = statistics[0].n
    for s in statistics:
        if s.n != n:
            raise ValidationError("statistics", f"paired statistics need the same examples; {s.name} has {s.n}, expected {n}", s.n)
    out: list[list[np.ndarray]] = [[] for _ in statistics]
    for w in resample_weights(n, n_resamples, seed):
        for k, s in enumerate(statistics):
            out[k].append(np.asarray(s.finalize(w @ s.rows, n), dtype=np.float64))
    return [np.concatenate(parts) for parts in out]


def percentile_interval(samples: np.ndarray, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    alpha = (1 - level) / 2
    lo, hi = np.nanpercentile(samples, [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi)


def estimate(
    stat: Statistic,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = DEFAULT_LEVEL,
) -> Estimate:
    """The metric with its percentile bootstrap interval (and Wilson for proportions)."""
    value = stat.value()
    (samples,) = bootstrap_distribution([stat], n_resamples=n_resamples, seed=seed)
    low, high = percentile_interval(samples, level)
    wilson = None
    if stat.proportion:
        z = _z(level)
        wilson = wilson_interval(float(stat.rows[:, 0].sum()), stat.n, z)
    return Estimate(value=value, low=low, high=high, n=stat.n, level=level, wilson=wilson)


def _z(level: float) -> float:
    """The two-sided normal quantile of a confidence level."""
    return NormalDist().inv_cdf(0.5 + level / 2)


def _check_n(n: int, what: str) -> None:
    if n <= 0:
        raise ValidationError(what, "needs at least one example", n)


def _check_same_length(a: Sequence[Any], b: Sequence[Any]) -> None:
    if len(a) != len(b):
        raise ValidationError("predictions", f"must be one per gold answer ({len(a)} gold)", len(b))
