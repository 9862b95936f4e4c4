"""The one prompt renderer, shared by the trainer and every inference path.

`PromptRenderer.render(task, input)` turns a task and an input into token-id
segments:

    prefix  = chat-template head + system text + the input (conversation/text)
    suffix  = the task's instruction + the answer cue (the assistant turn opening)
    answer  = the verbalizer (or target) + the end-of-answer token (training only)

Why this order: the input comes first and the instruction after it, so one
conversation's prefix is the same for every task scored on it and its KV cache
is computed once and shared (the paper's "task-specific prefix" of 4.1.2
becomes a task-specific suffix for this reason). Why separate segments: BPE
merges across a text boundary would make tokenize(prefix + suffix) differ from
tokenize(prefix) + tokenize(suffix); segments are cut at chat-template special
tokens or after a newline, where the pre-tokenizer always splits, so the
concatenated ids equal the ids of the joined text (tests check this on both
tokenizers), and a text-only backend sees the very tokens the trainer saw.

Customer text, task instructions and verbalizers are tokenized with special
tokens disabled: `<|im_end|>` typed by a customer or written into an
instruction is plain text and can neither end the prompt nor fake a turn.
Only the chat template's own text yields special tokens. In the prompt as
text (`Segments.text`, for text-only backends that tokenize with special
tokens enabled) every special-token string of those untrusted parts is broken
with a word joiner (U+2060) after its first character, so it cannot turn back
into a control token there either.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mtserve.errors import PreconditionError, ValidationError
from mtserve.inputs import Conversation, Input, TextPair, check_task_accepts
from mtserve.tasks import Channel, Label, Task, Taxonomy, TruncationBudget, TruncationPolicy

# The version of what `render` produces for a given task and input: bump it
# with any change to the template, markers or headers, and say in
# FORMAT_CHANGES which kind of task it changed. The renderer still renders
# every format in PROMPT_FORMATS, because a trained checkpoint is served in
# the format it was trained in (its manifest's training.prompt_format).
PROMPT_FORMAT = 2
PROMPT_FORMATS = (1, 2)
# The kind of task whose prompt each format changed. 2: a multi-label question
# asks its label last, so its 7 branches share the instruction and the
# question and differ only in the label's name and the answer (the engine's
# token tree for a conversation's 11 tasks: 416 tokens instead of 481).
FORMAT_CHANGES: dict[int, Taxonomy] = {2: Taxonomy.MULTILABEL}


# A trained checkpoint may be asked with a short task marker instead of the
# natural-language instruction: a multi-task model learns the marker in
# fine-tuning. A compact suffix opens the assistant's turn and starts it with
# the task's name ("NAME\n", a multi-label question "NAME: LABEL\n"), the
# answer after it: no question turn, whose template tokens were most of a
# marker's cost (9 of the 12-15 tokens of a "Task: NAME" user turn), so a
# task's question costs 6-8 tokens instead of 28-49. Opt-in (a job's
# mixture.suffixes), for multi-task runs only: the untrained model and
# zero-shot scoring need the instruction, and single-task baselines are the
# reference a compact mixture is measured against.
SUFFIXES = ("natural", "compact")
COMPACT_MARKER = "{name}"


def prompt_format_for(tasks: Iterable[Task]) -> int:
    """The oldest format that renders these tasks as PROMPT_FORMAT does. Run
    keys and trained checkpoints record this, so a finished run is never
    reused for prompts it was not trained on, and a change to one kind of
    task's prompt does not retire the finished runs of the others."""
    kinds = {task.taxonomy for task in tasks}
    return max([1] + [version for version, kind in FORMAT_CHANGES.items() if kind in kinds])


def check_prompt_format(value: Any, where: str = "prompt_format") -> None:
    if isinstance(value, bool) or value not in PROMPT_FORMATS:
        raise ValidationError(where, f"must be one of {', '.join(map(str, PROMPT_FORMATS))}, the prompt formats this mtserve renders", value)


def check_suffixes(value: Any, where: str = "suffixes") -> None:
    if value not in SUFFIXES:
        raise ValidationError(where, f"must be one of {', '.join(SUFFIXES)}", value)


@dataclass(frozen=True)
class PromptStyle:
    """How a checkpoint's prompts are rendered: what it was trained on (its
    manifest's training.prompt_format and training.suffixes). `learnt`: for
    compact suffixes, the tasks whose markers the model was trained on (its
    manifest's tasks); None when unknown or natural. A natural instruction is
    readable for any task; a marker the model never saw is not, so a compact
    checkpoint refuses other tasks rather than answer them confidently."""

    format: int = PROMPT_FORMAT
    suffixes: str = "natural"
    learnt: frozenset[str] | None = None

    def __post_init__(self) -> None:
        check_prompt_format(self.format)
        check_suffixes(self.suffixes)

    @property
    def compact(self) -> bool:
        return self.suffixes == "compact"


DEFAULT_STYLE = PromptStyle()  # an untrained model's: today's format, natural instructions


SYSTEM_PROMPT = (
    "You are a customer-service analytics assistant. Read the input, then answer "
    "the question after it with one of the allowed answers only."
)
# Multi-label tasks are asked one label at a time, answered yes or no (see
# `render`): each label gets an independent probability.
MULTILABEL_YES, MULTILABEL_NO = "yes", "no"
TRUNCATION_MARKER = "[... {n} earlier turns omitted ...]"
TEXT_TRUNCATION_MARKER = " [... truncated]"
CHANNEL_HEADERS = {
    Channel.CALL: "Phone call transcript (speech recognition):",
    Channel.IM: "Instant-messaging chat:",
    Channel.EMAIL: "E-mail:",
    Channel.REVIEW: "Guest review:",
}

# Inserted after the first character of a special-token string in untrusted
# text that leaves the process: invisible, and no token string contains it.
WORD_JOINER = "\u2060"

_S_SYSTEM, _S_INPUT, _S_QUESTION, _S_ANSWER = "\x00SYS\x00", "\x00INPUT\x00", "\x00QUESTION\x00", "\x00ANSWER\x00"


@dataclass(frozen=True)
class Segments:
    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    answer: tuple[int, ...] = ()
    # The same prompt as text, for backends that only take text; tokenizing it
    # (special tokens enabled) gives prefix + suffix when the untrusted text
    # holds no special-token strings, and never more special tokens than the
    # template's when it does (they are defused with WORD_JOINER).
    text: str = ""
    truncated: bool = False

    @property
    def prompt(self) -> tuple[int, ...]:
        return self.prefix + self.suffix

    @property
    def ids(self) -> tuple[int, ...]:
        return self.prefix + self.suffix + self.answer


@dataclass(frozen=True)
class RenderedInput:
    """An input rendered and cut once: every task scored on it shares it."""

    ids: tuple[int, ...]  # the whole prefix segment
    text: str
    truncated: bool
    content_tokens: int


@dataclass(frozen=True)
class _Piece:
    text: str
    trusted: bool  # template text: special tokens allowed


class PromptRenderer:
    """Renders (task, input) for one tokenizer. Build one per tokenizer and
    keep it: suffixes and label paths are cached per task version."""

    def __init__(
        self, tokenizer: Any, policy: TruncationPolicy | None = None, system_prompt: str = SYSTEM_PROMPT, *, style: PromptStyle = DEFAULT_STYLE
    ):
        self.style = style
        self.tokenizer = tokenizer
        self.policy = policy or TruncationPolicy()
        self.system_prompt = system_prompt
        self._tokenizer_lock = threading.Lock()
        # Task segments are cached per renderer, not on the class: a class-level
        # lru_cache on the method would keep every renderer (and its
        # tokenizer) alive for the life of the process.
        self.suffix_ids = functools.lru_cache(maxsize=4096)(self._suffix_ids)
        # Longest first, so that a special token containing another is defused whole.
        self._specials = sorted(
            {*tokenizer.all_special_tokens, *(t.content for t in tokenizer.added_tokens_decoder.values() if t.special)}, key=len, reverse=True
        )
        self._parse_template()

    # -- tokenization -------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        """Untrusted text: special-token strings are plain characters."""
        # The lock: `split_special_tokens` is switched on the shared Rust
        # tokenizer for the call, so two threads must not interleave.
        with self._tokenizer_lock:
            return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def encode_template(self, text: str) -> list[int]:
        """Template text: its special-token strings are special tokens."""
        with self._tokenizer_lock:
            return self.tokenizer(text, add_special_tokens=False, split_special_tokens=False)["input_ids"]

    def defuse(self, text: str) -> str:
        """Untrusted text for the prompt as text: no special-token string survives."""
        for special in self._specials:
            if special in text:
                text = text.replace(special, special[0] + WORD_JOINER + special[1:])
        return text

    def _encode(self, pieces: Sequence[_Piece]) -> tuple[tuple[int, ...], str]:
        ids: list[int] = []
        for piece in pieces:
            if piece.text:
                ids += self.encode_template(piece.text) if piece.trusted else self.encode_text(piece.text)
        return tuple(ids), "".join(p.text if p.trusted else self.defuse(p.text) for p in pieces)

    # -- the chat template, parsed once ------------------------------------------
    def _parse_template(self) -> None:
        """Render the model's chat template around sentinel strings and keep the
        template text between them. The prefix/suffix cut is placed just before
        the last special token between the input and the question, so that
        both segments start and end where the tokenizer splits anyway."""
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            raise ValidationError(
                "tokenizer.chat_template",
                "the model has no chat template; add one to its tokenizer_config.json (ChatML works for any model)",
                getattr(tok, "name_or_path", "?"),
            )
        msgs = [
            {"role": "system", "content": _S_SYSTEM},
            {"role": "user", "content": _S_INPUT},
            {"role": "user", "content": _S_QUESTION},
        ]
        prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": _S_ANSWER}], tokenize=False)
        try:
            head, rest = prompt.split(_S_SYSTEM)
            after_system, rest = rest.split(_S_INPUT)
            between, rest = rest.split(_S_QUESTION)
            cue = rest
            answer_tail = full.split(_S_ANSWER)[1]
        except ValueError:
            raise ValidationError(
                "tokenizer.chat_template",
                "must render a system message, two consecutive user messages and an assistant message",
                getattr(tok, "name_or_path", "?"),
            ) from None
        if not full.split(_S_ANSWER)[0].endswith(cue):
            raise ValidationError("tokenizer.chat_template", "the generation prompt does not open the assistant message", cue)
        specials = sorted(tok.all_special_tokens + list(getattr(tok, "added_tokens_encoder", {}).keys()), key=len, reverse=True)
        cut = max((between.rfind(s) for s in specials if s), default=-1)
        if cut < 0:
            raise ValidationError(
                "tokenizer.chat_template",
                "needs a special token between consecutive messages to cut the shared prefix exactly",
                between,
            )
        # The generation prompt alone (ChatML: "<|im_start|>assistant\n"): a
        # compact suffix follows the input's turn with it directly.
        one_turn = msgs[:2]
        closed = tok.apply_chat_template(one_turn, tokenize=False)
        opened = tok.apply_chat_template(one_turn, tokenize=False, add_generation_prompt=True)
        if not opened.startswith(closed) or not opened[len(closed):]:
            raise ValidationError("tokenizer.chat_template", "must open the assistant message with a generation prompt", opened[len(closed):])
        self._assistant_head = opened[len(closed):]
        self._head = head
        self._after_system = after_system
        self._prefix_tail = between[:cut]
        self._suffix_head = between[cut:]
        self._cue = cue
        # end of answer: the template text after the answer up to and including
        # its first special token (e.g. "<|im_end|>"); trailing newlines are not trained.
        tail = answer_tail.rstrip("\n")
        self._answer_tail = tail
        tail_ids = self.encode_template(tail)
        if not tail_ids:
            raise ValidationError("tokenizer.chat_template", "must close the assistant message with a token", answer_tail)
        self.end_of_answer_id: int = tail_ids[-1]
        self._answer_tail_ids = tuple(tail_ids)

    # -- rendering ----------------------------------------------------------------
    def content_text(self, inp: Input) -> list[str]:
        """The input as lines of text (a header line for the channel, then the
        turns); cutting a conversation removes whole lines."""
        if isinstance(inp, Conversation):
            return [CHANNEL_HEADERS[inp.channel]] + [f"{t.speaker.value}: {_one_line(t.text)}" for t in inp.turns]
        if isinstance(inp, TextPair):
            return [f"Text A: {inp.text.strip()}", f"Text B: {inp.text_b.strip()}"]
        header = [CHANNEL_HEADERS[inp.channel]] if inp.channel in (Channel.EMAIL, Channel.REVIEW) else []
        return header + [inp.text.strip()]

    def render_input(self, inp: Input, *, truncate: bool = True) -> RenderedInput:
        """The prefix segment of an input, cut to its budget once."""
        budget = self.policy.budget_for(inp.kind, getattr(inp, "channel", None))
        lines = self.content_text(inp)
        content = "\n".join(lines)
        n = len(self.encode_text(content))
        truncated = False
        if n > budget.max_tokens:
            if not truncate:
                channel = getattr(inp, "channel", None)
                where = inp.kind.value + (f"/{channel.value}" if channel else "")
                raise ValidationError(
                    "input",
                    f"has {n} tokens, over the {budget.max_tokens}-token budget for {where} input, and truncation is off",
                    n,
                    show_value=False,
                )
            content = self._cut(inp, lines, budget)
            n = len(self.encode_text(content))
            truncated = True
        pieces = [
            _Piece(self._head, True),
            _Piece(self.system_prompt, True),
            _Piece(self._after_system, True),
            _Piece(content, False),
            _Piece(self._prefix_tail, True),
        ]
        ids, text = self._encode(pieces)
        return RenderedInput(ids=ids, text=text, truncated=truncated, content_tokens=n)

    def _cut(self, inp: Input, lines: list[str], budget: TruncationBudget) -> str:
        count = lambda s: len(self.encode_text(s))
        if isinstance(inp, Conversation):
            header, turns = lines[0], lines[1:]
            keep = min(budget.keep_first_turns, len(turns))
            first, rest = turns[:keep], turns[keep:]
            # The latest turn always stays; then earlier ones, most recent
            # first, while they fit with the marker.
            tail: list[str] = rest[-1:]
            for line in reversed(rest[:-1]):
                candidate = [header, *first, TRUNCATION_MARKER.format(n=len(rest) - len(tail) - 1), line, *tail]
                if count("\n".join(candidate)) > budget.max_tokens:
                    break
                tail.insert(0, line)
            omitted = len(rest) - len(tail)
            kept = [header, *first] + ([TRUNCATION_MARKER.format(n=omitted)] if omitted else []) + tail
            text = "\n".join(kept)
            if count(text) <= budget.max_tokens:
                return text
            # The kept turns alone are over budget (one very long turn): fall
            # back to cutting characters, keeping the end of the conversation.
            return _cut_chars(text, budget.max_tokens, count, keep="end", marker=TRUNCATION_MARKER.format(n=omitted) + "\n")
        return _cut_chars("\n".join(lines), budget.max_tokens, count, keep="start", marker=TEXT_TRUNCATION_MARKER)

    def instruction_text(self, task: Task, ask: Label | None = None) -> str:
        multilabel = task.taxonomy is Taxonomy.MULTILABEL
        if multilabel and ask is None:
            raise ValidationError("ask", f"multi-label task {task.name!r} is rendered one label at a time", None, show_value=False)
        if self.style.compact:
            if self.style.learnt is not None and task.name not in self.style.learnt:
                raise PreconditionError(
                    f"task {task.name!r}: this checkpoint was trained with compact suffixes on "
                    f"{', '.join(sorted(self.style.learnt)) or 'no task'} and never learnt its marker; route the task to a checkpoint trained on it"
                )
            marker = COMPACT_MARKER.format(name=task.name)
            return marker + (f": {ask.verbalizer}" if multilabel and ask is not None else "")
        text = task.instruction.format(labels=", ".join(label.verbalizer for label in task.labels)).strip()
        if multilabel and ask is not None:
            if self.style.format == 1:
                text += f"\nCategory: {ask.verbalizer}\nDoes this category apply? Answer {MULTILABEL_YES} or {MULTILABEL_NO}."
            else:  # the label last: the questions share everything before it
                text += f"\nDoes the category below apply? Answer {MULTILABEL_YES} or {MULTILABEL_NO}.\nCategory: {ask.verbalizer}"
        return text

    def _suffix_ids(self, task: Task, ask: Label | None = None) -> tuple[tuple[int, ...], str]:
        """The task segment: cached per task definition (Task is frozen and hashable)."""
        # The instruction (with its verbalizers) is the registrant's text, not the template's: untrusted.
        if self.style.compact:  # the assistant's turn, opened with the marker
            pieces = [_Piece(self._assistant_head, True), _Piece(self.instruction_text(task, ask) + "\n", False)]
        else:
            pieces = [_Piece(self._suffix_head, True), _Piece(self.instruction_text(task, ask), False), _Piece(self._cue, True)]
        return self._encode(pieces)

    def answer_ids(self, answer: str) -> tuple[int, ...]:
        return tuple(self.encode_text(answer)) + self._answer_tail_ids

    def render(
        self,
        task: Task,
        inp: Input,
        *,
        answer: str | None = None,
        ask: Label | None = None,
        truncate: bool = True,
        rendered_input: RenderedInput | None = None,
    ) -> Segments:
        """Render one (task, input) pair. `answer` (a verbalizer, a target text,
        or yes/no for a multi-label `ask`) fills the answer segment for training.
        `rendered_input` lets a caller that scores many tasks on one input pass
        the input rendered once."""
        check_task_accepts(task, inp)
        rin = rendered_input or self.render_input(inp, truncate=truncate)
        suffix, suffix_text = self.suffix_ids(task, ask)
        total = len(rin.ids) + len(suffix)
        if total > task.max_input_tokens:
            raise ValidationError(
                "input",
                f"renders to {total} prompt tokens, task {task.name!r} allows at most {task.max_input_tokens}",
                total,
                show_value=False,
            )
        answer_ids = self.answer_ids(answer) if answer is not None else ()
        text = rin.text + suffix_text + (self.defuse(answer) + self._answer_tail if answer is not None else "")
        return Segments(prefix=rin.ids, suffix=suffix, answer=answer_ids, text=text, truncated=rin.truncated)

    def render_training(self, task: Task, inp: Input, gold: str | Sequence[str]) -> list[Segments]:
        """The training examples for one labelled input: one for a
        single-answer task (gold = label name, or target text for generation),
        one yes/no question per label for a multi-label task (gold = names)."""
        rin = self.render_input(inp)
        if task.taxonomy is Taxonomy.GENERATION:
            return [self.render(task, inp, answer=str(gold), rendered_input=rin)]
        if task.taxonomy is Taxonomy.MULTILABEL:
            names = {gold} if isinstance(gold, str) else set(gold)
            for name in names:
                task.label(name)  # unknown label -> NotFoundError naming it
            return [
                self.render(task, inp, ask=label, answer=MULTILABEL_YES if label.name in names else MULTILABEL_NO, rendered_input=rin)
                for label in task.labels
            ]
        if not isinstance(gold, str):
            raise ValidationError("label", f"task {task.name!r} takes one label", gold)
        return [self.render(task, inp, answer=task.label(gold).verbalizer, rendered_input=rin)]


def _one_line(text: str) -> str:
    # A turn is one line: its own newlines would look like new turns.
    return " ".join(text.split())


def _cut_chars(text: str, max_tokens: int, count: Any, *, keep: str, marker: str) -> str:
    """Binary search the longest head (keep='start') or tail (keep='end') of
    `text` that fits with the marker."""
    lo, hi = 0, len(text)
    best = ""
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = (text[:mid] + marker) if keep == "start" else (marker + text[len(text) - mid:])
        if count(candidate) <= max_tokens:
            best, lo = candidate, mid + 1
        else:
            hi = mid - 1
    return best
