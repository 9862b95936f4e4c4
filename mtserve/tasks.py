"""Task definitions and task catalogues (YAML), validated on load.

A task is what the paper calls a "text-to-text" task (section 4.1.2): an
instruction (the task-specific prefix), the kind of input it reads, a taxonomy
and its labels with the verbalizer text the model emits. The file form is the
pydantic models TaskSpec, LabelSpec, BudgetSpec and CatalogueSpec (one
documented field each). Every rule has an exact message naming the field, the
rule and the value given, because the people reading them are ops engineers
editing a YAML file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import string
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, model_validator
from pydantic import ValidationError as PydanticValidationError

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
        """Budgets from their YAML/JSON list (BudgetSpec); None: the defaults."""
        if raw is None:
            return cls()
        try:
            specs = _BUDGETS.validate_python(raw)
        except PydanticValidationError as exc:
            raise _refusal(exc, raw, where, BudgetSpec) from None
        return cls(tuple(s.to_budget() for s in specs))


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


# -- the file form ----------------------------------------------------------------------
#
# Task, Label and the catalogue types above stay plain frozen dataclasses: code
# and tests build and `dataclasses.replace` them in process, and the engine is
# tested on a task that never passed these rules. What a catalogue file (or a
# task's JSON in the registry, or a protobuf message) may say is the *Spec
# models below: pydantic, as config.py and trainer/job.py, one documented field
# each. `_refusal` turns the first thing pydantic refuses into the project's
# ValidationError with the field's dotted path, the rule and the value.

_DEFAULT_METRIC = {
    Taxonomy.BINARY: Metric.ACCURACY,
    Taxonomy.ORDINAL: Metric.ACCURACY,
    Taxonomy.MULTICLASS: Metric.ACCURACY,
    Taxonomy.MULTILABEL: Metric.MICRO_F1,
    Taxonomy.GENERATION: Metric.ROUGE_L,
}


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


# Field types. A rule raises ValueError (the value is the one the field was
# given) or ValidationError with a path relative to the model that checks it.
def _one_of(enum_cls: type[StrEnum], *, optional: bool = False) -> BeforeValidator:
    allowed = ", ".join(m.value for m in enum_cls)

    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        try:
            return enum_cls(value)
        except ValueError:
            raise ValueError(f"must be one of {allowed}") from None

    return BeforeValidator(check)


def _between(lo: int, hi: int) -> AfterValidator:
    def check(value: int) -> int:
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return AfterValidator(check)


def _positive(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("must be a positive integer")
    return value


def _name(value: Any) -> str:
    return check_name(value, "")


def _instruction(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    unknown = placeholders(value, "") - INSTRUCTION_PLACEHOLDERS
    if unknown:
        raise ValueError(f"uses placeholder(s) {sorted(unknown)} that do not exist; allowed: {sorted(INSTRUCTION_PLACEHOLDERS)}")
    return value


def _threshold(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ValueError("must be a number strictly between 0 and 1")
    return float(value)


def _channels(value: tuple[Channel, ...]) -> tuple[Channel, ...]:
    if not value:
        raise ValueError("must be a non-empty list of channels")
    if len(set(value)) != len(value):
        raise ValueError("must not repeat a channel")
    return value


Name = Annotated[str, BeforeValidator(_name)]
Text = Annotated[str, Field(strict=True)]


def _checked_unset() -> Any:
    """A required field whose absence reads as the rule it breaks ("must match
    ...", "must be one of ... (got None)"): None is also what the protobuf
    conversion passes for an unset enum."""
    return Field(default=None, validate_default=True)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class LabelSpec(_Spec):
    """One label of a task. A plain string is shorthand for a label whose
    verbalizer is its name."""

    name: Text
    """What APIs, reports and the gold data use."""
    verbalizer: Text | None = None
    """The text the model emits for this label (default: the name). Short, no
    surrounding white space, no newline: it is what the model is trained on."""
    value: Annotated[float, Field(strict=True)] | None = None
    """Ordinal tasks only, and required there: the label's position on the
    scale; labels are listed in strictly increasing order of value."""
    description: Text | None = None
    """For people; never shown to the model."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"name": data, "verbalizer": data}
        if not isinstance(data, Mapping):
            raise ValueError("must be a mapping with name and verbalizer")  # noqa: TRY004 - pydantic reports ValueError as a field error, TypeError not
        return data

    @model_validator(mode="after")
    def _texts(self) -> LabelSpec:
        if not self.name.strip():
            raise ValidationError("name", "must not be empty", self.name)
        verbalizer = self.verbalizer_or_name
        if not verbalizer.strip():
            raise ValidationError("verbalizer", "must not be empty", verbalizer)
        if verbalizer != verbalizer.strip() or "\n" in verbalizer:
            raise ValidationError("verbalizer", "must not start or end with white space or contain a newline", verbalizer)
        return self

    @property
    def verbalizer_or_name(self) -> str:
        return self.name if self.verbalizer is None else self.verbalizer

    def to_label(self) -> Label:
        return Label(name=self.name, verbalizer=self.verbalizer_or_name, value=self.value, description=self.description or "")


class TaskSpec(_Spec):
    """One task as a catalogue file writes it (Task.to_dict is the same form)."""

    name: Name = _checked_unset()
    """Unique in its catalogue and in the registry: ^[a-z][a-z0-9_-]{1,63}$."""
    version: Annotated[int, BeforeValidator(_positive)] | None = None
    """Assigned by the registry (a new one whenever the definition changes); files leave it out."""
    title: Text | None = None
    """A short human name."""
    description: Text | None = None
    """For people; never shown to the model."""
    taxonomy: Annotated[Taxonomy, _one_of(Taxonomy)] = _checked_unset()
    """binary (exactly 2 labels), ordinal and multiclass (at least 2),
    multilabel (at least 1), generation (no labels)."""
    input_kind: Annotated[InputKind, _one_of(InputKind)] = _checked_unset()
    """text, text_pair or conversation."""
    instruction: Annotated[Text, AfterValidator(_instruction)]
    """The task-specific prefix, asked after the input; `{labels}` lists the
    label verbalizers. No other placeholder, format spec or conversion; at most
    MAX_INSTRUCTION_CHARS characters once the labels are filled in."""
    labels: list[LabelSpec] | None = None
    """The answers, in order; label names and verbalizers (ignoring case) are unique."""
    metric: Annotated[Metric, _one_of(Metric)] | None = None
    """The dev/test metric; default by taxonomy (accuracy; micro_f1 for
    multilabel; rouge_l for generation); it must be one ALLOWED_METRICS lists."""
    channels: Annotated[tuple[Annotated[Channel, _one_of(Channel)], ...], AfterValidator(_channels)]
    """Where the task applies: call, im, email, review; call and/or im for conversation tasks."""
    max_input_tokens: Annotated[int, Field(strict=True), _between(MIN_INPUT_TOKENS, MAX_INPUT_TOKENS)] = 2048
    """The longest input (tokens of its rendered text) the task reads."""
    threshold: Annotated[float, BeforeValidator(_threshold)] = 0.5
    """Multilabel only: a label is in the answer set when its probability is at least this."""
    max_new_tokens: Annotated[int, Field(strict=True), _between(1, 4096)] = 128
    """Generation only: greedy decoding stops at the end of the answer or here."""

    @model_validator(mode="after")
    def _rules(self) -> TaskSpec:
        """Rules across fields (one field's type and range are its annotation's)."""
        taxonomy = self.taxonomy
        if taxonomy is Taxonomy.GENERATION and "labels" in placeholders(self.instruction, "instruction"):
            raise ValidationError("instruction", "a generation task has no labels to list", self.instruction)
        labels = self._labels()
        rendered = self.instruction.format(labels=", ".join(label.verbalizer for label in labels))  # exactly what the renderer does
        if len(rendered) > MAX_INSTRUCTION_CHARS:
            raise ValidationError(
                "instruction", f"renders to {len(rendered)} characters with its labels; at most {MAX_INSTRUCTION_CHARS}", self.instruction[:80] + "..."
            )
        if self.metric is not None and self.metric not in ALLOWED_METRICS[taxonomy]:
            allowed = sorted(m.value for m in ALLOWED_METRICS[taxonomy])
            raise ValidationError("metric", f"a {taxonomy.value} task allows metrics {allowed}", self.metric.value)
        if self.input_kind is InputKind.CONVERSATION:
            bad = [c.value for c in self.channels if c not in CONVERSATION_CHANNELS]
            if bad:
                raise ValidationError("channels", "a conversation task applies to call and/or im only", bad)
        if "threshold" in self.model_fields_set and taxonomy is not Taxonomy.MULTILABEL:
            raise ValidationError("threshold", "only multi-label tasks have a threshold", self.threshold)
        if "max_new_tokens" in self.model_fields_set and taxonomy is not Taxonomy.GENERATION:
            raise ValidationError("max_new_tokens", "only generation tasks have max_new_tokens", self.max_new_tokens)
        return self

    def _labels(self) -> tuple[Label, ...]:
        taxonomy, raw = self.taxonomy, self.labels
        if taxonomy is Taxonomy.GENERATION:
            if raw:
                raise ValidationError("labels", "must be empty for a generation task", [s.name for s in raw])
            return ()
        if raw is None:
            raise ValidationError("labels", "must be a list of labels", None)
        minimum = 1 if taxonomy is Taxonomy.MULTILABEL else 2
        if len(raw) < minimum:
            raise ValidationError("labels", f"a {taxonomy.value} task needs at least {minimum} labels", len(raw))
        if taxonomy is Taxonomy.BINARY and len(raw) != 2:
            raise ValidationError("labels", "a binary task has exactly 2 labels", len(raw))
        for i, spec in enumerate(raw):
            if taxonomy is Taxonomy.ORDINAL and spec.value is None:
                raise ValidationError(f"labels[{i}].value", "an ordinal label needs a numeric value giving its order", None)
            if taxonomy is not Taxonomy.ORDINAL and spec.value is not None:
                raise ValidationError(f"labels[{i}].value", f"only ordinal labels carry a value, this task is {taxonomy.value}", spec.value)
        labels = tuple(spec.to_label() for spec in raw)
        seen_names: dict[str, int] = {}
        seen_verbalizers: dict[str, int] = {}
        for i, label in enumerate(labels):
            if label.name in seen_names:
                raise ValidationError(f"labels[{i}].name", f"duplicate label name (also labels[{seen_names[label.name]}])", label.name)
            seen_names[label.name] = i
            folded = label.verbalizer.casefold()
            if folded in seen_verbalizers:
                raise ValidationError(
                    f"labels[{i}].verbalizer", f"duplicate verbalizer (same as labels[{seen_verbalizers[folded]}] ignoring case)", label.verbalizer
                )
            seen_verbalizers[folded] = i
        if taxonomy is Taxonomy.ORDINAL:
            for i in range(1, len(labels)):
                if not labels[i].value > labels[i - 1].value:  # type: ignore[operator]  # both set: checked above
                    raise ValidationError(f"labels[{i}].value", "ordinal labels must be listed in strictly increasing order of value", labels[i].value)
        return labels

    def to_task(self) -> Task:
        return Task(
            name=self.name,
            version=self.version,
            title=self.title or "",
            description=self.description or "",
            instruction=self.instruction,
            input_kind=self.input_kind,
            taxonomy=self.taxonomy,
            labels=self._labels(),
            metric=self.metric or _DEFAULT_METRIC[self.taxonomy],
            channels=self.channels,
            max_input_tokens=self.max_input_tokens,
            threshold=self.threshold,
            max_new_tokens=self.max_new_tokens,
        )


class BudgetSpec(_Spec):
    """One truncation budget (TruncationBudget)."""

    input_kind: Annotated[InputKind, _one_of(InputKind)] = _checked_unset()
    """The kind of input it bounds."""
    channel: Annotated[Channel | None, _one_of(Channel, optional=True)] = None
    """Only inputs from this channel; left out: every channel without a budget of its own."""
    max_tokens: Annotated[int, Field(strict=True), _between(MIN_INPUT_TOKENS, MAX_INPUT_TOKENS)] = 1024
    """Tokens of the rendered input."""
    keep_first_turns: Annotated[int, Field(strict=True), _between(0, 64)] = 1
    """Conversations: turns kept from the start when the middle is cut."""

    def to_budget(self) -> TruncationBudget:
        return TruncationBudget(self.input_kind, self.channel, self.max_tokens, self.keep_first_turns)


def _one_budget_each(budgets: list[BudgetSpec]) -> list[BudgetSpec]:
    seen: set[tuple[InputKind, Channel | None]] = set()
    for i, b in enumerate(budgets):
        if (b.input_kind, b.channel) in seen:
            raise ValidationError(f"[{i}]", "duplicate budget for this input kind and channel", (b.input_kind.value, b.channel and b.channel.value))
        seen.add((b.input_kind, b.channel))
    return budgets


Budgets = Annotated[list[BudgetSpec], AfterValidator(_one_budget_each)]


class CatalogueSpec(_Spec):
    """A catalogue file: tasks plus the truncation budgets they share."""

    catalogue: Name = _checked_unset()
    """The catalogue's name: ^[a-z][a-z0-9_-]{1,63}$."""
    description: Text | None = None
    """For people."""
    truncation: Budgets | None = None
    """Input budgets by kind and channel; left out: DEFAULT_TRUNCATION."""
    tasks: list[TaskSpec]
    """At least one; task names are unique."""

    @model_validator(mode="after")
    def _rules(self) -> CatalogueSpec:
        if not self.tasks:
            raise ValidationError("tasks", "must be a non-empty list", [])
        seen: dict[str, int] = {}
        for i, task in enumerate(self.tasks):
            if task.name in seen:
                raise ValidationError(f"tasks[{i}].name", f"duplicate task name (also tasks[{seen[task.name]}])", task.name)
            seen[task.name] = i
        return self

    def to_catalogue(self) -> Catalogue:
        truncation = TruncationPolicy() if self.truncation is None else TruncationPolicy(tuple(b.to_budget() for b in self.truncation))
        return Catalogue(name=self.catalogue, description=self.description or "", truncation=truncation, tasks=tuple(t.to_task() for t in self.tasks))


# pydantic's words for the refusals it makes itself, in the project's voice.
_RULES = {
    "missing": "is required",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
}


def _at(path: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    if not path or not part or part.startswith("["):
        return path + part
    return f"{path}.{part}"


def _model_at(root: Any, loc: tuple[str | int, ...]) -> type[BaseModel]:
    """The spec model that holds the key at `loc` (list positions skipped)."""

    def model_in(annotation: Any) -> Any:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return annotation
        return next((m for m in map(model_in, typing.get_args(annotation)) if m is not None), None)

    model = model_in(root)
    for part in loc:
        if isinstance(part, str):
            model = model_in(model.model_fields[part].annotation)
    return model


def _child(node: Any, part: str | int) -> Any:
    if isinstance(node, Mapping):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and part < len(node):
        return node[part]
    return None


def _refusal(exc: PydanticValidationError, data: Any, where: str, root: Any, task_depth: int | None = None) -> ValidationError:
    """pydantic's first refusal (unknown keys before the rest) as one
    ValidationError at its dotted path under `where`. The task at position
    `task_depth` of the path (0 for a task, 2 for a catalogue's `tasks[i]`) is
    named after it once its name is valid, `tasks[3](rc-a).labels[0].name`,
    except in a refusal of that name or of an unknown key beside it."""
    errors = exc.errors()
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(err["loc"])
    beside_name = task_depth is not None and len(loc) == task_depth + 1 and (loc[-1] == "name" or err["type"] == "extra_forbidden")
    path, node = where, data
    for depth in range(len(loc) + 1):
        if depth == task_depth and not beside_name and isinstance(node, Mapping) and isinstance(node.get("name"), str) and NAME_RE.match(node["name"]):
            path += f"({node['name']})"
        if depth < len(loc):
            path = _at(path, loc[depth])
            node = _child(node, loc[depth])
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ValidationError):  # a rule that names a field relative to its model
        return ValidationError(_at(path, cause.field), cause.rule, cause.value, show_value=cause.show_value)
    if err["type"] == "extra_forbidden":
        allowed = sorted(_model_at(root, loc[:-1]).model_fields)
        return ValidationError(path, f"unknown key; allowed keys are {allowed}", loc[-1], show_value=False)
    if err["type"] == "missing":
        return ValidationError(path, "is required", None, show_value=False)
    rule = str(cause) if isinstance(cause, ValueError) else _RULES.get(err["type"], err["msg"][:1].lower() + err["msg"][1:])
    return ValidationError(path, rule, err.get("input"))


_BUDGETS: TypeAdapter[list[BudgetSpec]] = TypeAdapter(Budgets)


def parse_task(data: Any, where: str = "task") -> Task:
    """Build and validate a Task from its YAML/JSON mapping (TaskSpec)."""
    try:
        spec = TaskSpec.model_validate(data)
    except PydanticValidationError as exc:
        raise _refusal(exc, data, where, TaskSpec, task_depth=0) from None
    return spec.to_task()


def parse_catalogue(data: Any, source: str = "catalogue") -> Catalogue:
    """Build and validate a Catalogue from its YAML mapping (CatalogueSpec)."""
    try:
        spec = CatalogueSpec.model_validate(data)
    except PydanticValidationError as exc:
        raise _refusal(exc, data, source, CatalogueSpec, task_depth=2) from None
    return spec.to_catalogue()


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
