"""Task-mixing strategies (paper sections 3.1 and 4.2) and a seeded, resumable sampler.

The rate functions are plain functions of the task sizes ``n_l`` (the number of
training examples of task ``l``), in the style of seqio's
``mixing_rate_num_examples``. Each returns ``{task: rate}`` with the rates summing
to 1, in the key order of ``sizes``.

The paper's two-stage recipe uses them as follows:
  stage 1 (high-resource tasks only): ``instance_balanced`` (eq. 1);
  stage 2 (all tasks): ``temperature_scaled_capped`` (eqs. 3-4) with, per Table 6,
  K = 20000 and tau = 2 (CLUE) or K = 8000 and tau = 3.33 (domain tasks).
``class_balanced``, ``temperature_scaled`` and ``unimax`` are the baselines it
compares against.

``MixtureSampler`` turns rates into a reproducible stream of
``(task, example_index)`` pairs that can be checkpointed and resumed.
"""

from __future__ import annotations

import bisect
import math
import numbers
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from mtserve.errors import ValidationError

STRATEGIES: tuple[str, ...] = (
    "instance_balanced",
    "class_balanced",
    "temperature",
    "temperature_capped",
    "unimax",
)


# --------------------------------------------------------------------------- validation


def _is_integral(value: object) -> bool:
    """An integral number (``numbers.Integral``: int, numpy ints, ...) that is not a bool.

    A plain ``bool`` helper rather than inline ``isinstance`` checks: typeshed does
    not declare ``int`` a subclass of ``numbers.Integral``, so narrowing an ``int``
    parameter with ``isinstance(x, numbers.Integral)`` makes mypy treat the valid
    path as unreachable (and skip checking it).
    """
    return not isinstance(value, bool) and isinstance(value, numbers.Integral)


def _is_real(value: object) -> bool:
    """A real number (``numbers.Real``) that is not a bool; see ``_is_integral``."""
    return not isinstance(value, bool) and isinstance(value, numbers.Real)


def _check_sizes(sizes: Mapping[str, int]) -> None:
    if not isinstance(sizes, Mapping):
        raise ValidationError("sizes", "must be a mapping of task name to example count", type(sizes).__name__)
    if not sizes:
        raise ValidationError("sizes", "must name at least one task", dict(sizes))
    for task, n in sizes.items():
        if not isinstance(task, str) or not task:
            raise ValidationError("sizes", "task names must be non-empty strings", task)
        # bool is an int subclass; True as a size is certainly a mistake.
        if not _is_integral(n) or n <= 0:
            raise ValidationError(f"sizes[{task!r}]", "must be a positive integer number of examples", n)


def _check_positive(field: str, value: Any) -> float:
    """A finite real > 0 (tau, K, budget, max_epochs)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValidationError(field, "must be a finite number > 0", value)
    return float(value)


# --------------------------------------------------------------------------- rate functions


def instance_balanced(sizes: Mapping[str, int]) -> dict[str, float]:
    """Instance-balanced sampling, paper eq. (1):

        p_l = n_l / sum_{l'} n_{l'}

    Every training example is equally likely, so tasks are drawn in proportion
    to their size.
    """
    _check_sizes(sizes)
    total = sum(sizes.values())
    return {task: n / total for task, n in sizes.items()}


def class_balanced(sizes: Mapping[str, int]) -> dict[str, float]:
    """Class-balanced sampling (paper section 3.1, after Mahajan et al. 2018):

        p_l = 1 / |L|

    The paper's "class" is a task: every task is equally likely, whatever its size.
    It is the tau -> infinity limit of eq. (2).
    """
    _check_sizes(sizes)
    return {task: 1.0 / len(sizes) for task in sizes}


def _temperature(weights: Mapping[str, float], tau: float) -> dict[str, float]:
    """q_l = p_l^(1/tau) / sum p^(1/tau), computed in log space.

    Normalising p first is unnecessary (the constant cancels), and working with
    exp((log w_l - log w_max) / tau) keeps the largest term at exactly 1, so a
    small tau cannot underflow every term to 0 and divide by zero.
    """
    log_max = math.log(max(weights.values()))
    scaled = {task: math.exp((math.log(w) - log_max) / tau) for task, w in weights.items()}
    total = sum(scaled.values())
    return {task: s / total for task, s in scaled.items()}


def temperature_scaled(sizes: Mapping[str, int], tau: float) -> dict[str, float]:
    """Temperature-scaled sampling, paper eq. (2):

        p_l = n_l / sum n            (eq. 1)
        q_l = p_l^(1/tau) / sum_{l'} p_{l'}^(1/tau)

    tau = 1 is instance-balanced; as tau -> infinity it approaches class-balanced
    (uniform). The paper quotes tau in (1.43, 2, 3.33) as common values.
    """
    _check_sizes(sizes)
    tau = _check_positive("tau", tau)
    return _temperature(sizes, tau)


def temperature_scaled_capped(sizes: Mapping[str, int], tau: float, cap_k: float) -> dict[str, float]:
    """The paper's stage-2 mixture, eqs. (3)-(4): an artificial size limit K, then
    the temperature:

        p_l = min(n_l, K) / sum_{l'} min(n_{l'}, K)      (eq. 3)
        q_l = p_l^(1/tau) / sum_{l'} p_{l'}^(1/tau)      (eq. 4)

    The cap stops the largest tasks from dominating; K >= max n_l leaves eq. (2)
    unchanged. Table 6 uses K = 20000, tau = 2 and K = 8000, tau = 3.33.
    """
    _check_sizes(sizes)
    tau = _check_positive("tau", tau)
    cap_k = _check_positive("cap_k", cap_k)
    return _temperature({task: min(n, cap_k) for task, n in sizes.items()}, tau)


def unimax_allocation(sizes: Mapping[str, int], budget: float, max_epochs: float) -> dict[str, float]:
    """UniMax example allocation (Chung et al. 2023, Algorithm 1; the paper's
    baseline in section 5):

        visit tasks by ascending n_l (ties by name), B = budget
        for the i-th task l (0-based) of |L|:
            U_l = min(B / (|L| - i), max_epochs * n_l)
            B   = B - U_l

    i.e. the budget is split as uniformly as possible, no task is repeated more
    than max_epochs times, and what a capped (small) task cannot use is shared
    uniformly by the larger tasks after it. If budget >= max_epochs * sum n,
    every task is capped and the allocation sums to less than the budget.
    """
    _check_sizes(sizes)
    budget = _check_positive("budget", budget)
    max_epochs = _check_positive("max_epochs", max_epochs)
    order = sorted(sizes, key=lambda task: (sizes[task], task))
    remaining = budget
    allocation: dict[str, float] = {}
    for i, task in enumerate(order):
        allocation[task] = min(remaining / (len(order) - i), max_epochs * sizes[task])
        remaining -= allocation[task]
    return {task: allocation[task] for task in sizes}  # back to the caller's key order


def unimax(sizes: Mapping[str, int], budget: float, max_epochs: float) -> dict[str, float]:
    """UniMax rates: the allocation of ``unimax_allocation`` normalised,

        q_l = U_l / sum_{l'} U_{l'}
    """
    allocation = unimax_allocation(sizes, budget, max_epochs)
    total = sum(allocation.values())
    return {task: u / total for task, u in allocation.items()}


def rates_for(
    strategy: str,
    sizes: Mapping[str, int],
    *,
    tau: float | None = None,
    cap_k: float | None = None,
    budget: float | None = None,
    max_epochs: float | None = None,
) -> dict[str, float]:
    """Dispatch on a strategy name from ``STRATEGIES``.

    A parameter the strategy needs must be given; one it does not use must be
    left None, because a config that sets tau for "instance_balanced" almost
    certainly meant another strategy and should fail loudly, not train silently.
    """
    given = {"tau": tau, "cap_k": cap_k, "budget": budget, "max_epochs": max_epochs}
    needs = {
        "instance_balanced": (),
        "class_balanced": (),
        "temperature": ("tau",),
        "temperature_capped": ("tau", "cap_k"),
        "unimax": ("budget", "max_epochs"),
    }
    if strategy not in needs:
        raise ValidationError("strategy", f"must be one of {list(STRATEGIES)}", strategy)
    for name, value in given.items():
        if name in needs[strategy] and value is None:
            raise ValidationError(name, f"is required by strategy {strategy!r}", value)
        if name not in needs[strategy] and value is not None:
            raise ValidationError(name, f"is not used by strategy {strategy!r}; leave it unset", value)
    if strategy == "instance_balanced":
        return instance_balanced(sizes)
    if strategy == "class_balanced":
        return class_balanced(sizes)
    # The checks above guarantee that every parameter the strategy needs is set.
    if strategy == "temperature":
        assert tau is not None
        return temperature_scaled(sizes, tau)
    if strategy == "temperature_capped":
        assert tau is not None and cap_k is not None
        return temperature_scaled_capped(sizes, tau, cap_k)
    assert budget is not None and max_epochs is not None
    return unimax(sizes, budget, max_epochs)


# --------------------------------------------------------------------------- sampler


def _shuffled(n: int, rng: random.Random) -> list[int]:
    """Fisher-Yates over range(n) using only ``rng.random()``.

    Python guarantees ``Random.random()`` yields the same sequence for the same
    seed across versions; ``shuffle``/``randrange`` carry no such promise, so a
    pinned draw sequence (and a resumed run) could change with the interpreter.
    """
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        j = min(int(rng.random() * (i + 1)), i)  # min(): guard against float rounding up to i + 1
        order[i], order[j] = order[j], order[i]
    return order


class MixtureSampler:
    """An endless, reproducible stream of ``(task, example_index)`` pairs.

    * Task: drawn from ``rates`` (non-negative weights, normalised here) with a
      ``random.Random(seed)`` using only ``random()`` and an inverse-CDF lookup.
      Tasks are ordered by name, so the stream does not depend on the mapping's
      insertion order.
    * Example: drawn without replacement within a task. Each task walks a
      permutation of its examples; when it is used up the next epoch starts with a
      fresh permutation. A small task therefore visits every example once before
      any repeats -- this is what "epochs" of a low-resource task mean.
      The permutation of (task, epoch) comes from its own generator seeded with
      the string ``f"{seed}/{task}/{epoch}"`` (str seeds are hashed with SHA-512),
      so it never has to be stored: the state is the task generator plus one
      (epoch, position) cursor per task, small enough to sit in every checkpoint.

    ``examples_per_task`` maps each task to its size ``n`` (indices 0..n-1) or to
    an explicit sequence of example indices (e.g. a filtered subset); yielded
    indices are taken from that sequence.
    """

    STATE_VERSION = 1

    def __init__(
        self,
        rates: Mapping[str, float],
        examples_per_task: Mapping[str, int | Sequence[int]],
        seed: int,
    ) -> None:
        if not _is_integral(seed) or seed < 0:
            # Random() seeds with abs(int), so -1 and 1 would silently coincide.
            raise ValidationError("seed", "must be an integer >= 0", seed)
        self._seed = int(seed)
        self._examples = self._check_examples(examples_per_task)
        self._tasks = sorted(self._examples)
        self._rates = self._check_rates(rates, self._tasks)
        self._cdf: list[float] = []
        acc = 0.0
        for task in self._tasks:
            acc += self._rates[task]
            self._cdf.append(acc)
        self._rng = random.Random(self._seed)
        self._cursor = {task: [0, 0] for task in self._tasks}  # task -> [epoch, position]
        self._perm: dict[str, tuple[int, list[int]]] = {}  # cache: task -> (epoch, permutation)

    @staticmethod
    def _check_examples(examples: Mapping[str, int | Sequence[int]]) -> dict[str, Sequence[int]]:
        if not isinstance(examples, Mapping) or not examples:
            raise ValidationError("examples_per_task", "must map at least one task to its examples", examples)
        out: dict[str, Sequence[int]] = {}
        for task, ex in examples.items():
            field = f"examples_per_task[{task!r}]"
            if isinstance(ex, numbers.Integral) and not isinstance(ex, bool):
                if ex <= 0:
                    raise ValidationError(field, "a task needs at least one example", ex)
                out[task] = range(int(ex))
            elif isinstance(ex, Sequence) and not isinstance(ex, str):
                if len(ex) == 0:
                    raise ValidationError(field, "a task needs at least one example", list(ex))
                # Copy: a caller mutating its list later must not change a resumed run.
                out[task] = ex if isinstance(ex, range) else tuple(int(i) for i in ex)
            else:
                raise ValidationError(field, "must be a positive size or a sequence of example indices", ex)
        return out

    @staticmethod
    def _check_rates(rates: Mapping[str, float], tasks: list[str]) -> dict[str, float]:
        if not isinstance(rates, Mapping):
            raise ValidationError("rates", "must be a mapping of task name to rate", type(rates).__name__)
        missing, extra = sorted(set(tasks) - set(rates)), sorted(set(rates) - set(tasks))
        if missing or extra:
            raise ValidationError(
                "rates", f"must name the same tasks as examples_per_task (missing {missing}, extra {extra})", sorted(rates)
            )
        for task in tasks:
            r = rates[task]
            if not _is_real(r) or not math.isfinite(r) or r < 0:
                raise ValidationError(f"rates[{task!r}]", "must be a finite number >= 0", r)
        total = sum(float(rates[task]) for task in tasks)
        if total <= 0:
            raise ValidationError("rates", "must not all be zero", dict(rates))
        return {task: float(rates[task]) / total for task in tasks}

    # -- drawing

    def _draw_task(self) -> str:
        i = bisect.bisect_right(self._cdf, self._rng.random() * self._cdf[-1])
        # Float rounding can put the draw at/after the last cumulative value:
        # fall back to the last task that has a positive rate.
        if i >= len(self._tasks):
            i = max(k for k, task in enumerate(self._tasks) if self._rates[task] > 0)
        return self._tasks[i]

    def _permutation(self, task: str, epoch: int) -> list[int]:
        cached = self._perm.get(task)
        if cached is None or cached[0] != epoch:
            perm = _shuffled(len(self._examples[task]), random.Random(f"{self._seed}/{task}/{epoch}"))
            self._perm[task] = cached = (epoch, perm)
        return cached[1]

    def __next__(self) -> tuple[str, int]:
        task = self._draw_task()
        cursor = self._cursor[task]
        if cursor[1] >= len(self._examples[task]):  # epoch used up: start the next one
            cursor[0], cursor[1] = cursor[0] + 1, 0
        position = self._permutation(task, cursor[0])[cursor[1]]
        cursor[1] += 1
        return task, self._examples[task][position]

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return self

    def take(self, n: int) -> list[tuple[str, int]]:
        """The next ``n`` draws."""
        if not _is_integral(n) or n < 0:
            raise ValidationError("n", "must be an integer >= 0", n)
        return [next(self) for _ in range(n)]

    @property
    def rates(self) -> dict[str, float]:
        """The normalised rates, by task name."""
        return dict(self._rates)

    def epochs_seen(self) -> dict[str, float]:
        """How many passes over each task's examples have been drawn so far
        (fractional), e.g. to watch low-resource tasks for over-fitting."""
        return {t: e + p / len(self._examples[t]) for t, (e, p) in self._cursor.items()}

    # -- checkpointing

    def state_dict(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot; ``load_state_dict`` on a sampler built
        with the same rates, examples and seed continues the exact same stream."""
        version, internal, gauss_next = self._rng.getstate()
        return {
            "version": self.STATE_VERSION,
            "seed": self._seed,
            "rates": dict(self._rates),
            "sizes": {task: len(self._examples[task]) for task in self._tasks},
            "rng": [version, list(internal), gauss_next],
            "cursor": {task: list(c) for task, c in self._cursor.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a snapshot. Refuses one taken with a different seed, task set,
        task sizes or rates: resuming it would silently change the stream."""
        if not isinstance(state, Mapping) or state.get("version") != self.STATE_VERSION:
            got = state.get("version") if isinstance(state, Mapping) else type(state).__name__
            raise ValidationError("state.version", f"must be {self.STATE_VERSION}", got)
        if state.get("seed") != self._seed:
            raise ValidationError("state.seed", f"was saved with another seed than this sampler's {self._seed}", state.get("seed"))
        sizes = {task: len(self._examples[task]) for task in self._tasks}
        if state.get("sizes") != sizes:
            raise ValidationError("state.sizes", f"do not match this sampler's {sizes}", state.get("sizes"))
        saved_rates = state.get("rates") or {}
        if set(saved_rates) != set(self._rates) or any(
            not math.isclose(saved_rates[t], r, rel_tol=1e-12, abs_tol=1e-15) for t, r in self._rates.items()
        ):
            raise ValidationError("state.rates", f"do not match this sampler's {self._rates}", saved_rates)
        version, internal, gauss_next = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss_next))
        self._cursor = {task: [int(e), int(p)] for task, (e, p) in state["cursor"].items()}
        self._perm.clear()  # rebuilt lazily from (seed, task, epoch)
