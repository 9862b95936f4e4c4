"""Task definitions and task catalogues (YAML), validated on load.

A task is what the paper calls a "text-to-text" task (section 4.1.2): an
instruction (the task-specific prefix), the kind of input it reads, a taxonomy
and its labels with the verbalizer text the model emits. Every rule has an
exact message naming the field, the rule and the value given, because the
people reading them are ops engineers editing a YAML file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from mtserve.errors import NotFoundError, ValidationError
from mtserve.files import load_yaml

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{1,63}$")
# Placeholders an instruction may use; `{labels}` lists the label verbalizers.
INSTRUCTION_PLACEHOLDERS = frozenset({"labels"})
MIN_INPUT_TOKENS, MAX_INPUT_TOKENS = 16, 131_072


class Taxonomy(StrEnum):
    BINARY = "binary"
    ORDINAL = "ordinal"
    MULTICLASS = "multiclass"
    MULTILABEL = "multilabel"
    GENERATION = "generation"


class InputKind(StrEnum):
    TEXT = "text"
    TEXT_PAIR = "text_pair"
    CONVERSATION = "conversation"


class Channel(StrEnum):
    """Where an input comes from. Conversations are phone calls (ASR
    transcripts) or instant-messaging chats; texts may be e-mails or reviews."""

    CALL = "call"
    IM = "im"
    EMAIL = "email"
    REVIEW = "review"


CONVERSATION_CHANNELS = frozenset({Channel.CALL, Channel.IM})


class Metric(StrEnum):
    ACCURACY = "accuracy"
    MACRO_F1 = "macro_f1"
    MICRO_F1 = "micro_f1"
    EXACT_MATCH = "exact_match"
    ROUGE_L = "rouge_l"


ALLOWED_METRICS: dict[Taxonomy, frozenset[Metric]] = {
    Taxonomy.BINARY: frozenset({Metric.ACCURACY, Metric.MACRO_F1}),
    Taxonomy.ORDINAL: frozenset({Metric.ACCURACY, Metric.MACRO_F1}),
    Taxonomy.MULTICLASS: frozenset({Metric.ACCURACY, Metric.MACRO_F1}),
    # multi-label accuracy is exact set match; micro/macro F1 over labels
    Taxonomy.MULTILABEL: frozenset({Metric.ACCURACY, Metric.MICRO_F1, Metric.MACRO_F1}),
    Taxonomy.GENERATION: frozenset({Metric.EXACT_MATCH, Metric.ROUGE_L}),
}


@dataclass(frozen=True)
class Label:
    """One answer of a task: `name` is what APIs and reports use, `verbalizer`
    the text the model emits (short: it is what the model is trained on)."""

    name: str
    verbalizer: str
    value: float | None = None  # ordinal tasks only: the label's position on the scale
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "verbalizer": self.verbalizer}
        if self.value is not None:
            out["value"] = self.value
        if self.description:
            out["description"] = self.description
        return out


@dataclass(frozen=True)
class Task:
    name: str
    instruction: str
    input_kind: InputKind
    taxonomy: Taxonomy
    labels: tuple[Label, ...]
    metric: Metric
    channels: tuple[Channel, ...]
    max_input_tokens: int = 2048
    threshold: float = 0.5  # multi-label: a label is in the answer set when p >= threshold
    max_new_tokens: int = 128  # generation: greedy decoding stops at EOS or here
    title: str = ""
    description: str = ""
    version: int | None = None  # assigned by the registry; catalogue files may omit it

    # -- derived views ------------------------------------------------------
    @property
    def is_generation(self) -> bool:
        return self.taxonomy is Taxonomy.GENERATION

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(label.name for label in self.labels)

    def label(self, name: str) -> Label:
        for label in self.labels:
            if label.name == name:
                return label
        raise NotFoundError(f"task {self.name!r} has no label {name!r}; labels are {list(self.label_names)}")

    def applies_to(self, input_kind: InputKind, channel: Channel | None) -> bool:
        """A task applies to an input of its kind whose channel it lists."""
        return self.input_kind is input_kind and (channel is None or channel in self.channels)

    def content_hash(self) -> str:
        """Hash of the definition without its version: the registry assigns a
        new version exactly when this changes."""
        body = self.to_dict()
        body.pop("version", None)
        return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def with_version(self, version: int | None) -> Task:
        return dataclasses.replace(self, version=version)

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}" if self.version is not None else self.name

    # -- YAML/JSON form ------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.version is not None:
            out["version"] = self.version
        if self.title:
            out["title"] = self.title
        if self.description:
            out["description"] = self.description
        out.update(
            instruction=self.instruction,
            input_kind=self.input_kind.value,
            taxonomy=self.taxonomy.value,
            channels=[c.value for c in self.channels],
            metric=self.metric.value,
            max_input_tokens=self.max_input_tokens,
        )
        if self.taxonomy is Taxonomy.MULTILABEL:
            out["threshold"] = self.threshold
        if self.is_generation:
            out["max_new_tokens"] = self.max_new_tokens
        else:
            out["labels"] = [label.to_dict() for label in self.labels]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "task") -> Task:
        return parse_task(data, where)


_TASK_KEYS = {
    "name", "version", "title", "description", "instruction", "input_kind", "taxonomy",
    "labels", "metric", "channels", "max_input_tokens", "threshold", "max_new_tokens",
}
_LABEL_KEYS = {"name", "verbalizer", "value", "description"}
_DEFAULT_METRIC = {
    Taxonomy.BINARY: Metric.ACCURACY,
    Taxonomy.ORDINAL: Metric.ACCURACY,
    Taxonomy.MULTICLASS: Metric.ACCURACY,
    Taxonomy.MULTILABEL: Metric.MICRO_F1,
    Taxonomy.GENERATION: Metric.ROUGE_L,
}


def _enum(enum_cls: type[StrEnum], value: Any, where: str) -> Any:
    try:
        return enum_cls(value)
    except ValueError:
        allowed = ", ".join(m.value for m in enum_cls)
        raise ValidationError(where, f"must be one of {allowed}", value) from None


def _str(data: Mapping[str, Any], key: str, where: str, *, required: bool = True, default: str = "") -> str:
    value = data.get(key, None)
    if value is None:
        if required:
            raise ValidationError(f"{where}.{key}", "is required", None, show_value=False)
        return default
    if not isinstance(value, str):
        raise ValidationError(f"{where}.{key}", "must be a string", value)
    return value


def _int(data: Mapping[str, Any], key: str, where: str, default: int, lo: int, hi: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{where}.{key}", "must be an integer", value)
    if not lo <= value <= hi:
        raise ValidationError(f"{where}.{key}", f"must be between {lo} and {hi}", value)
    return value


def _no_unknown_keys(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            raise ValidationError(f"{where}.{key}", f"unknown key; allowed keys are {sorted(allowed)}", key, show_value=False)


def check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValidationError(where, f"must match {NAME_RE.pattern}", name)
    return name


# An instruction is a sentence or a short paragraph; this bounds what one
# registered task can add to every prompt it is asked in.
MAX_INSTRUCTION_CHARS = 4000


def placeholders(template: str, where: str) -> set[str]:
    """The `{field}` names a template uses. Unbalanced braces are an error, and
    so is a format spec or conversion (`{labels:>9999}`, `{labels!r}`): they
    would fail or blow up at render time, inside a batch of other requests."""
    try:
        fields = [(fname, spec, conv) for _, fname, spec, conv in string.Formatter().parse(template) if fname is not None]
    except ValueError as exc:
        raise ValidationError(where, f"is not a valid template ({exc}; write literal braces as '{{{{' and '}}}}')", template) from None
    for fname, spec, conv in fields:
        if spec or conv:
            shown = "{" + fname + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            raise ValidationError(where, f"placeholders take no format spec or conversion (write {{{fname}}}, not {shown})", template)
    return {fname for fname, _, _ in fields}


def _parse_labels(raw: Any, taxonomy: Taxonomy, where: str) -> tuple[Label, ...]:
    if taxonomy is Taxonomy.GENERATION:
        if raw:
            raise ValidationError(where, "must be empty for a generation task", raw)
        return ()
    if not isinstance(raw, list):
        raise ValidationError(where, "must be a list of labels", raw)
    minimum = 1 if taxonomy is Taxonomy.MULTILABEL else 2
    if len(raw) < minimum:
        raise ValidationError(where, f"a {taxonomy.value} task needs at least {minimum} labels", len(raw))
    if taxonomy is Taxonomy.BINARY and len(raw) != 2:
        raise ValidationError(where, "a binary task has exactly 2 labels", len(raw))
    labels: list[Label] = []
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        if isinstance(item, str):  # shorthand: the name is its own verbalizer
            item = {"name": item, "verbalizer": item}
        if not isinstance(item, Mapping):
            raise ValidationError(at, "must be a mapping with name and verbalizer", item)
        _no_unknown_keys(item, _LABEL_KEYS, at)
        name = _str(item, "name", at)
        verbalizer = _str(item, "verbalizer", at, required=False, default=name)
        if not name.strip():
            raise ValidationError(f"{at}.name", "must not be empty", name)
        if not verbalizer.strip():
            raise ValidationError(f"{at}.verbalizer", "must not be empty", verbalizer)
        if verbalizer != verbalizer.strip() or "\n" in verbalizer:
            raise ValidationError(f"{at}.verbalizer", "must not start or end with white space or contain a newline", verbalizer)
        value = item.get("value")
        if taxonomy is Taxonomy.ORDINAL:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValidationError(f"{at}.value", "an ordinal label needs a numeric value giving its order", value)
            value = float(value)
        elif value is not None:
            raise ValidationError(f"{at}.value", f"only ordinal labels carry a value, this task is {taxonomy.value}", value)
        labels.append(Label(name=name, verbalizer=verbalizer, value=value, description=str(item.get("description") or "")))
    seen_names: dict[str, int] = {}
    seen_verbalizers: dict[str, int] = {}
    for i, label in enumerate(labels):
        if label.name in seen_names:
            raise ValidationError(f"{where}[{i}].name", f"duplicate label name (also labels[{seen_names[label.name]}])", label.name)
        seen_names[label.name] = i
        folded = label.verbalizer.casefold()
        if folded in seen_verbalizers:
            raise ValidationError(
                f"{where}[{i}].verbalizer",
                f"duplicate verbalizer (same as labels[{seen_verbalizers[folded]}] ignoring case)",
                label.verbalizer,
            )
        seen_verbalizers[folded] = i
    if taxonomy is Taxonomy.ORDINAL:
        values = [label.value for label in labels]
        for i in range(1, len(values)):
            if not values[i] > values[i - 1]:  # type: ignore[operator]
                raise ValidationError(
                    f"{where}[{i}].value", "ordinal labels must be listed in strictly increasing order of value", values[i]
                )
    return tuple(labels)


def parse_task(data: Mapping[str, Any], where: str = "task") -> Task:
    """Build and validate a Task from its YAML/JSON mapping."""
    if not isinstance(data, Mapping):
        raise ValidationError(where, "must be a mapping", data)
    _no_unknown_keys(data, _TASK_KEYS, where)
    name = check_name(data.get("name"), f"{where}.name")
    where = f"{where}({name})"
    version = data.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise ValidationError(f"{where}.version", "must be a positive integer", version)
    taxonomy = _enum(Taxonomy, data.get("taxonomy"), f"{where}.taxonomy")
    input_kind = _enum(InputKind, data.get("input_kind"), f"{where}.input_kind")
    instruction = _str(data, "instruction", where)
    if not instruction.strip():
        raise ValidationError(f"{where}.instruction", "must not be empty", instruction)
    unknown = placeholders(instruction, f"{where}.instruction") - INSTRUCTION_PLACEHOLDERS
    if unknown:
        raise ValidationError(
            f"{where}.instruction",
            f"uses placeholder(s) {sorted(unknown)} that do not exist; allowed: {sorted(INSTRUCTION_PLACEHOLDERS)}",
            instruction,
        )
    if taxonomy is Taxonomy.GENERATION and "labels" in placeholders(instruction, where):
        raise ValidationError(f"{where}.instruction", "a generation task has no labels to list", instruction)
    labels = _parse_labels(data.get("labels"), taxonomy, f"{where}.labels")
    rendered = instruction.format(labels=", ".join(label.verbalizer for label in labels))  # exactly what the renderer does
    if len(rendered) > MAX_INSTRUCTION_CHARS:
        raise ValidationError(
            f"{where}.instruction", f"renders to {len(rendered)} characters with its labels; at most {MAX_INSTRUCTION_CHARS}", instruction[:80] + "..."
        )
    metric = _enum(Metric, data.get("metric", _DEFAULT_METRIC[taxonomy].value), f"{where}.metric")
    if metric not in ALLOWED_METRICS[taxonomy]:
        allowed = sorted(m.value for m in ALLOWED_METRICS[taxonomy])
        raise ValidationError(f"{where}.metric", f"a {taxonomy.value} task allows metrics {allowed}", metric.value)
    raw_channels = data.get("channels")
    if not isinstance(raw_channels, list) or not raw_channels:
        raise ValidationError(f"{where}.channels", "must be a non-empty list of channels", raw_channels)
    channels = tuple(_enum(Channel, c, f"{where}.channels[{i}]") for i, c in enumerate(raw_channels))
    if len(set(channels)) != len(channels):
        raise ValidationError(f"{where}.channels", "must not repeat a channel", raw_channels)
    if input_kind is InputKind.CONVERSATION:
        bad = [c.value for c in channels if c not in CONVERSATION_CHANNELS]
        if bad:
            raise ValidationError(f"{where}.channels", "a conversation task applies to call and/or im only", bad)
    threshold = data.get("threshold", 0.5)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < float(threshold) < 1.0:
        raise ValidationError(f"{where}.threshold", "must be a number strictly between 0 and 1", threshold)
    if "threshold" in data and taxonomy is not Taxonomy.MULTILABEL:
        raise ValidationError(f"{where}.threshold", "only multi-label tasks have a threshold", threshold)
    if "max_new_tokens" in data and taxonomy is not Taxonomy.GENERATION:
        raise ValidationError(f"{where}.max_new_tokens", "only generation tasks have max_new_tokens", data["max_new_tokens"])
    return Task(
        name=name,
        version=version,
        title=_str(data, "title", where, required=False),
        description=_str(data, "description", where, required=False),
        instruction=instruction,
        input_kind=input_kind,
        taxonomy=taxonomy,
        labels=labels,
        metric=metric,
        channels=channels,
        max_input_tokens=_int(data, "max_input_tokens", where, 2048, MIN_INPUT_TOKENS, MAX_INPUT_TOKENS),
        threshold=float(threshold),
        max_new_tokens=_int(data, "max_new_tokens", where, 128, 1, 4096),
    )


# -- catalogues -----------------------------------------------------------------


@dataclass(frozen=True)
class TruncationBudget:
    """How long an input of one kind (and channel) may be, in tokens of its
    rendered text. A conversation over budget keeps its first `keep_first_turns`
    turns and as many of the most recent turns as fit, with a marker between."""

    input_kind: InputKind
    channel: Channel | None
    max_tokens: int
    keep_first_turns: int = 1

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"input_kind": self.input_kind.value}
        if self.channel is not None:
            out["channel"] = self.channel.value
        out["max_tokens"] = self.max_tokens
        if self.input_kind is InputKind.CONVERSATION:
            out["keep_first_turns"] = self.keep_first_turns
        return out


DEFAULT_TRUNCATION: tuple[TruncationBudget, ...] = (
    TruncationBudget(InputKind.CONVERSATION, Channel.CALL, 1536, 1),
    TruncationBudget(InputKind.CONVERSATION, Channel.IM, 1024, 1),
    TruncationBudget(InputKind.CONVERSATION, None, 1024, 1),
    TruncationBudget(InputKind.TEXT, None, 1024),
    TruncationBudget(InputKind.TEXT_PAIR, None, 1024),
)


@dataclass(frozen=True)
class TruncationPolicy:
    budgets: tuple[TruncationBudget, ...] = DEFAULT_TRUNCATION

    def budget_for(self, input_kind: InputKind, channel: Channel | None) -> TruncationBudget:
        """The most specific budget: (kind, channel), then (kind, any channel),
        then the built-in default for the kind."""
        for candidates in (self.budgets, DEFAULT_TRUNCATION):
            for b in candidates:
                if b.input_kind is input_kind and b.channel is not None and b.channel == channel:
                    return b
            for b in candidates:
                if b.input_kind is input_kind and b.channel is None:
                    return b
        raise AssertionError(f"no default truncation budget for {input_kind}")  # DEFAULT_TRUNCATION covers every kind

    def to_list(self) -> list[dict[str, Any]]:
        return [b.to_dict() for b in self.budgets]

    @classmethod
    def from_list(cls, raw: Any, where: str = "truncation") -> TruncationPolicy:
        if raw is None:
            return cls()
        if not isinstance(raw, list):
            raise ValidationError(where, "must be a list of budgets", raw)
        budgets = []
        seen = set()
        for i, item in enumerate(raw):
            at = f"{where}[{i}]"
            if not isinstance(item, Mapping):
                raise ValidationError(at, "must be a mapping", item)
            _no_unknown_keys(item, {"input_kind", "channel", "max_tokens", "keep_first_turns"}, at)
            kind = _enum(InputKind, item.get("input_kind"), f"{at}.input_kind")
            channel = None if item.get("channel") is None else _enum(Channel, item.get("channel"), f"{at}.channel")
            if (kind, channel) in seen:
                raise ValidationError(at, "duplicate budget for this input kind and channel", (kind.value, channel))
            seen.add((kind, channel))
            budgets.append(
                TruncationBudget(
                    input_kind=kind,
                    channel=channel,
                    max_tokens=_int(item, "max_tokens", at, 1024, MIN_INPUT_TOKENS, MAX_INPUT_TOKENS),
                    keep_first_turns=_int(item, "keep_first_turns", at, 1, 0, 64),
                )
            )
        return cls(tuple(budgets))


@dataclass(frozen=True)
class Catalogue:
    """A set of tasks plus the truncation budgets shared by all of them."""

    name: str
    tasks: tuple[Task, ...]
    truncation: TruncationPolicy = field(default_factory=TruncationPolicy)
    description: str = ""

    def task(self, name: str) -> Task:
        for task in self.tasks:
            if task.name == name:
                return task
        raise NotFoundError(f"unknown task {name!r}; the catalogue {self.name!r} has {len(self.tasks)} tasks")

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"catalogue": self.name}
        if self.description:
            out["description"] = self.description
        out["truncation"] = self.truncation.to_list()
        out["tasks"] = [t.to_dict() for t in self.tasks]
        return out


def parse_catalogue(data: Any, source: str = "catalogue") -> Catalogue:
    if not isinstance(data, Mapping):
        raise ValidationError(source, "must be a mapping with 'catalogue' and 'tasks'", type(data).__name__)
    _no_unknown_keys(data, {"catalogue", "description", "truncation", "tasks"}, source)
    name = check_name(data.get("catalogue"), f"{source}.catalogue")
    raw_tasks = data.get("tasks")
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise ValidationError(f"{source}.tasks", "must be a non-empty list", raw_tasks)
    tasks = [parse_task(t, f"{source}.tasks[{i}]") for i, t in enumerate(raw_tasks)]
    seen: dict[str, int] = {}
    for i, task in enumerate(tasks):
        if task.name in seen:
            raise ValidationError(f"{source}.tasks[{i}].name", f"duplicate task name (also tasks[{seen[task.name]}])", task.name)
        seen[task.name] = i
    return Catalogue(
        name=name,
        description=str(data.get("description") or ""),
        truncation=TruncationPolicy.from_list(data.get("truncation"), f"{source}.truncation"),
        tasks=tuple(tasks),
    )


def load_catalogue(path: str | Path) -> Catalogue:
    path = Path(path)
    return parse_catalogue(load_yaml(path, "catalogue"), source=path.name)


def dump_catalogue(catalogue: Catalogue, path: str | Path | None = None) -> str:
    text = yaml.safe_dump(catalogue.to_dict(), sort_keys=False, allow_unicode=True, width=100)
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text


def builtin_catalogue_path(name: str = "hotel") -> Path:
    path = Path(__file__).parent / "catalogues" / f"{name}.yaml"
    if not path.exists():
        available = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise NotFoundError(f"no built-in catalogue {name!r}; available: {available}")
    return path


def tasks_by_name(tasks: Iterable[Task]) -> dict[str, Task]:
    return {t.name: t for t in tasks}
