"""The qualification gate (paper section 3.2) and the overhead measure (5.1.1, appendix D).

A task is *qualified* on a multi-task model when its dev metric reaches 99% of
its single-task baseline:

    qualified  <=>  m_multi >= 0.99 * m_single          (point estimates: the paper's rule)

On a dev set of a thousand examples a one-point difference is inside the
noise, so the gate also reports the ratio r = m_multi / m_single with a 95%
paired-bootstrap interval: both systems are scored on the same dev examples,
each resample draws the same examples for both (the same weights), and r is
computed per resample. Where 0.99 falls in that interval is the verdict:

    qualified       the whole interval is at or above 0.99
    not qualified   the whole interval is below 0.99
    within noise    the interval straddles 0.99 (the point rule still decides
                    `qualified`, but a re-run could flip it)

Overhead (section 5.1.1; appendix D for several models per method):

    overhead = 1 / max over models of (qualified tasks on that model)

which is 1 (100%) for single-task fine-tuning (one model per task) and
undefined ("-") when no task qualifies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from mtserve.errors import NotFoundError, ValidationError
from trainer.evaluate import LOWER_IS_BETTER, TaskEval
from trainer.metrics import DEFAULT_LEVEL, bootstrap_distribution, percentile_interval

THRESHOLD = 0.99
# Stands in for an infinite ratio (a baseline of 0) inside percentile
# interpolation, where inf - inf would give NaN.
_BIG = 1e12


class Verdict(StrEnum):
    QUALIFIED = "qualified"
    NOT_QUALIFIED = "not qualified"
    WITHIN_NOISE = "within noise"


@dataclass(frozen=True)
class Qualification:
    task: str
    metric: str
    candidate: float  # the multi-task model's metric
    baseline: float  # the single-task model's metric
    ratio: float  # candidate / baseline (see ratio())
    ratio_low: float
    ratio_high: float
    threshold: float
    qualified: bool  # the paper's rule on the point estimates
    verdict: Verdict  # where the threshold lies in the ratio's interval
    p_pass: float  # share of resamples in which candidate >= threshold * baseline
    n: int
    level: float = DEFAULT_LEVEL
    # The baseline does not beat its trivial baseline (trainer.evaluate.is_degenerate):
    # reaching 99% of it says little, and the verdict says so.
    degenerate_baseline: bool = False
    # Qualifications written before degenerate_baseline existed lack the key;
    # to_dict leaves it out of them again, so they read back unchanged.
    unrecorded: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    @property
    def within_noise(self) -> bool:
        return self.verdict is Verdict.WITHIN_NOISE

    def describe(self) -> str:
        pct = f"{self.level:.0%}"
        against = " against a degenerate baseline (it does not beat its trivial baseline)" if self.degenerate_baseline else ""
        head = (
            f"{self.task}: {self.metric} {self.candidate * 100:.2f} vs baseline {self.baseline * 100:.2f}, "
            f"ratio {_fmt_ratio(self.ratio)} ({pct} CI {_fmt_ratio(self.ratio_low)}-{_fmt_ratio(self.ratio_high)}, n={self.n})"
        )
        if self.verdict is Verdict.QUALIFIED:
            return f"{head}: qualified{against}; the whole interval is at or above {self.threshold}"
        if self.verdict is Verdict.NOT_QUALIFIED:
            return f"{head}: not qualified; the whole interval is below {self.threshold}"
        point = ("qualified" + against) if self.qualified else "not qualified"
        return (
            f"{head}: {point} by the point estimate, but within noise: the interval straddles {self.threshold} "
            f"({self.p_pass:.0%} of resamples pass)"
        )

    @property
    def label(self) -> str:
        """The verdict as a results table says it: qualified / within noise /
        not qualified, or "qualified against a degenerate baseline"."""
        if self.degenerate_baseline and self.qualified:
            return "qualified against a degenerate baseline" + (", within noise" if self.within_noise else "")
        return self.verdict.value

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["verdict"] = self.verdict.value
        for key in ("ratio", "ratio_low", "ratio_high"):
            out[key] = json_ratio(out[key])
        return {k: v for k, v in out.items() if k not in self.unrecorded and k != "unrecorded"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Qualification:
        values = dict(data)
        values["verdict"] = Verdict(values["verdict"])
        for key in ("ratio", "ratio_low", "ratio_high"):
            values[key] = float("inf") if values[key] is None else float(values[key])
        return cls(**values, unrecorded=frozenset({"degenerate_baseline"} - data.keys()))


def ratio(candidate: np.ndarray | float, baseline: np.ndarray | float) -> np.ndarray:
    """candidate / baseline, with 0/0 = 1 (both equally bad: no loss) and
    x/0 = inf for x > 0 (any gain over a zero baseline)."""
    c = np.asarray(candidate, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    safe = np.where(b > 0, b, 1.0)
    return np.where(b > 0, c / safe, np.where(c > 0, np.inf, 1.0))


def verdict(low: float, high: float, threshold: float = THRESHOLD) -> Verdict:
    if low >= threshold:
        return Verdict.QUALIFIED
    if high < threshold:
        return Verdict.NOT_QUALIFIED
    return Verdict.WITHIN_NOISE


def _aligned(candidate: TaskEval, baseline: TaskEval) -> np.ndarray:
    """Indices into the baseline's records, in the candidate's example order."""
    position = {rid: i for i, rid in enumerate(baseline.ids)}
    missing = [rid for rid in candidate.ids if rid not in position]
    extra = len(position) - (len(candidate.ids) - len(missing))
    if missing or extra:
        raise ValidationError(
            f"qualify({candidate.task})",
            f"candidate and baseline must be scored on the same examples: {len(missing)} candidate ids have no"
            f" baseline record and {extra} baseline ids have no candidate record (first missing: {missing[:3]})",
            show_value=False,
        )
    return np.array([position[rid] for rid in candidate.ids], dtype=int)


def qualify(
    candidate: TaskEval,
    baseline: TaskEval,
    *,
    threshold: float = THRESHOLD,
    n_resamples: int | None = None,
    seed: int | None = None,
    level: float = DEFAULT_LEVEL,
    degenerate_baseline: bool = False,
) -> Qualification:
    """Gate one task: the candidate's primary metric against the baseline's,
    with a paired-bootstrap interval of their ratio (resamples and seed default
    to the candidate evaluation's own)."""
    if candidate.task != baseline.task:
        raise ValidationError("qualify", f"compares one task with itself; got {candidate.task!r} vs {baseline.task!r}", show_value=False)
    if candidate.primary != baseline.primary:
        raise ValidationError(
            f"qualify({candidate.task})", f"metrics differ: {candidate.primary!r} vs baseline {baseline.primary!r}", show_value=False
        )
    if None not in (candidate.task_version, baseline.task_version) and candidate.task_version != baseline.task_version:
        raise ValidationError(
            f"qualify({candidate.task})",
            f"the baseline was evaluated on task version {baseline.task_version}, the candidate on {candidate.task_version};"
            " re-run the baseline for the current definition",
            show_value=False,
        )
    metric = candidate.primary
    if metric in LOWER_IS_BETTER:
        raise ValidationError(f"qualify({candidate.task})", "the 99% rule needs a higher-is-better metric", metric)
    order = _aligned(candidate, baseline)
    stat_c = candidate.statistic(metric)
    stat_b = baseline.statistic(metric).select(order)
    c_samples, b_samples = bootstrap_distribution(
        [stat_c, stat_b],
        n_resamples=n_resamples if n_resamples is not None else candidate.n_resamples,
        seed=seed if seed is not None else candidate.seed,
    )
    r_samples = ratio(c_samples, b_samples)
    low, high = percentile_interval(np.minimum(r_samples, _BIG), level)
    low, high = (float("inf") if v >= _BIG else v for v in (low, high))
    c_value, b_value = stat_c.value(), stat_b.value()
    return Qualification(
        task=candidate.task,
        metric=metric,
        candidate=c_value,
        baseline=b_value,
        ratio=float(ratio(c_value, b_value)),
        ratio_low=low,
        ratio_high=high,
        threshold=threshold,
        qualified=bool(c_value >= threshold * b_value),
        verdict=verdict(low, high, threshold),
        p_pass=float(np.mean(c_samples >= threshold * b_samples)),
        n=stat_c.n,
        level=level,
        degenerate_baseline=degenerate_baseline,
    )


def qualify_all(
    candidates: Mapping[str, TaskEval], baselines: Mapping[str, TaskEval], **kwargs: Any
) -> dict[str, Qualification]:
    """Gate every candidate task; a task without a baseline is an error (a
    route must never move on an unmeasured comparison)."""
    missing = sorted(set(candidates) - set(baselines))
    if missing:
        raise NotFoundError(f"no single-task baseline for task(s) {missing}; run their single-task jobs first")
    return {name: qualify(ev, baselines[name], **kwargs) for name, ev in candidates.items()}


# -- overhead -------------------------------------------------------------------------


def overhead(models: Sequence[Iterable[str]]) -> float | None:
    """1 / (the most qualified tasks on any one model); None when none qualify.
    `models` lists, per deployed model of a method, the names of its qualified
    tasks: [[t] for each task] for single-task fine-tuning gives 1.0."""
    best = max((len(set(m)) for m in models), default=0)
    return None if best == 0 else 1.0 / best


def num_qualified(models: Sequence[Iterable[str]]) -> int:
    """Num. in the paper's tables: distinct qualified tasks over the method's models."""
    return len(set().union(*[set(m) for m in models])) if models else 0


def format_overhead(value: float | None) -> str:
    """'20.0%' as in the paper's tables, '-' when no task qualifies."""
    return "-" if value is None else f"{value * 100:.1f}%"


def _fmt_ratio(value: float) -> str:
    return "inf" if value == float("inf") else f"{value:.3f}"


def json_ratio(value: float) -> float | None:
    return None if value == float("inf") else value  # JSON has no infinity


__all__ = [
    "THRESHOLD",
    "Qualification",
    "Verdict",
    "format_overhead",
    "json_ratio",
    "num_qualified",
    "overhead",
    "qualify",
    "qualify_all",
    "ratio",
    "verdict",
]
