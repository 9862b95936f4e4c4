from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Taxonomy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TAXONOMY_UNSPECIFIED: _ClassVar[Taxonomy]
    TAXONOMY_BINARY: _ClassVar[Taxonomy]
    TAXONOMY_ORDINAL: _ClassVar[Taxonomy]
    TAXONOMY_MULTICLASS: _ClassVar[Taxonomy]
    TAXONOMY_MULTILABEL: _ClassVar[Taxonomy]
    TAXONOMY_GENERATION: _ClassVar[Taxonomy]

class InputKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INPUT_KIND_UNSPECIFIED: _ClassVar[InputKind]
    INPUT_KIND_TEXT: _ClassVar[InputKind]
    INPUT_KIND_TEXT_PAIR: _ClassVar[InputKind]
    INPUT_KIND_CONVERSATION: _ClassVar[InputKind]

class Channel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANNEL_UNSPECIFIED: _ClassVar[Channel]
    CHANNEL_CALL: _ClassVar[Channel]
    CHANNEL_IM: _ClassVar[Channel]
    CHANNEL_EMAIL: _ClassVar[Channel]
    CHANNEL_REVIEW: _ClassVar[Channel]

class Metric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METRIC_UNSPECIFIED: _ClassVar[Metric]
    METRIC_ACCURACY: _ClassVar[Metric]
    METRIC_MACRO_F1: _ClassVar[Metric]
    METRIC_MICRO_F1: _ClassVar[Metric]
    METRIC_EXACT_MATCH: _ClassVar[Metric]
    METRIC_ROUGE_L: _ClassVar[Metric]

class Speaker(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPEAKER_UNSPECIFIED: _ClassVar[Speaker]
    SPEAKER_AGENT: _ClassVar[Speaker]
    SPEAKER_CUSTOMER: _ClassVar[Speaker]
    SPEAKER_SYSTEM: _ClassVar[Speaker]
TAXONOMY_UNSPECIFIED: Taxonomy
TAXONOMY_BINARY: Taxonomy
TAXONOMY_ORDINAL: Taxonomy
TAXONOMY_MULTICLASS: Taxonomy
TAXONOMY_MULTILABEL: Taxonomy
TAXONOMY_GENERATION: Taxonomy
INPUT_KIND_UNSPECIFIED: InputKind
INPUT_KIND_TEXT: InputKind
INPUT_KIND_TEXT_PAIR: InputKind
INPUT_KIND_CONVERSATION: InputKind
CHANNEL_UNSPECIFIED: Channel
CHANNEL_CALL: Channel
CHANNEL_IM: Channel
CHANNEL_EMAIL: Channel
CHANNEL_REVIEW: Channel
METRIC_UNSPECIFIED: Metric
METRIC_ACCURACY: Metric
METRIC_MACRO_F1: Metric
METRIC_MICRO_F1: Metric
METRIC_EXACT_MATCH: Metric
METRIC_ROUGE_L: Metric
SPEAKER_UNSPECIFIED: Speaker
SPEAKER_AGENT: Speaker
SPEAKER_CUSTOMER: Speaker
SPEAKER_SYSTEM: Speaker

class Label(_message.Message):
    __slots__ = ("name", "verbalizer", "value", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERBALIZER_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    verbalizer: str
    value: float
    description: str
    def __init__(self, name: _Optional[str] = ..., verbalizer: _Optional[str] = ..., value: _Optional[float] = ..., description: _Optional[str] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("name", "version", "title", "description", "instruction", "input_kind", "taxonomy", "channels", "labels", "metric", "max_input_tokens", "threshold", "max_new_tokens")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    INPUT_KIND_FIELD_NUMBER: _ClassVar[int]
    TAXONOMY_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    MAX_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    title: str
    description: str
    instruction: str
    input_kind: InputKind
    taxonomy: Taxonomy
    channels: _containers.RepeatedScalarFieldContainer[Channel]
    labels: _containers.RepeatedCompositeFieldContainer[Label]
    metric: Metric
    max_input_tokens: int
    threshold: float
    max_new_tokens: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., title: _Optional[str] = ..., description: _Optional[str] = ..., instruction: _Optional[str] = ..., input_kind: _Optional[_Union[InputKind, str]] = ..., taxonomy: _Optional[_Union[Taxonomy, str]] = ..., channels: _Optional[_Iterable[_Union[Channel, str]]] = ..., labels: _Optional[_Iterable[_Union[Label, _Mapping]]] = ..., metric: _Optional[_Union[Metric, str]] = ..., max_input_tokens: _Optional[int] = ..., threshold: _Optional[float] = ..., max_new_tokens: _Optional[int] = ...) -> None: ...

class TruncationBudget(_message.Message):
    __slots__ = ("input_kind", "channel", "max_tokens", "keep_first_turns")
    INPUT_KIND_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KEEP_FIRST_TURNS_FIELD_NUMBER: _ClassVar[int]
    input_kind: InputKind
    channel: Channel
    max_tokens: int
    keep_first_turns: int
    def __init__(self, input_kind: _Optional[_Union[InputKind, str]] = ..., channel: _Optional[_Union[Channel, str]] = ..., max_tokens: _Optional[int] = ..., keep_first_turns: _Optional[int] = ...) -> None: ...

class TruncationPolicy(_message.Message):
    __slots__ = ("budgets", "source")
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    budgets: _containers.RepeatedCompositeFieldContainer[TruncationBudget]
    source: str
    def __init__(self, budgets: _Optional[_Iterable[_Union[TruncationBudget, _Mapping]]] = ..., source: _Optional[str] = ...) -> None: ...

class Turn(_message.Message):
    __slots__ = ("speaker", "text", "timestamp")
    SPEAKER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    speaker: Speaker
    text: str
    timestamp: str
    def __init__(self, speaker: _Optional[_Union[Speaker, str]] = ..., text: _Optional[str] = ..., timestamp: _Optional[str] = ...) -> None: ...

class Conversation(_message.Message):
    __slots__ = ("conversation_id", "channel", "turns", "metadata")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    TURNS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    channel: Channel
    turns: _containers.RepeatedCompositeFieldContainer[Turn]
    metadata: _struct_pb2.Struct
    def __init__(self, conversation_id: _Optional[str] = ..., channel: _Optional[_Union[Channel, str]] = ..., turns: _Optional[_Iterable[_Union[Turn, _Mapping]]] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class Text(_message.Message):
    __slots__ = ("text", "channel")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    text: str
    channel: Channel
    def __init__(self, text: _Optional[str] = ..., channel: _Optional[_Union[Channel, str]] = ...) -> None: ...

class TextPair(_message.Message):
    __slots__ = ("text", "text_b", "channel")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TEXT_B_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    text: str
    text_b: str
    channel: Channel
    def __init__(self, text: _Optional[str] = ..., text_b: _Optional[str] = ..., channel: _Optional[_Union[Channel, str]] = ...) -> None: ...

class Input(_message.Message):
    __slots__ = ("text", "text_pair", "conversation")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TEXT_PAIR_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    text: Text
    text_pair: TextPair
    conversation: Conversation
    def __init__(self, text: _Optional[_Union[Text, _Mapping]] = ..., text_pair: _Optional[_Union[TextPair, _Mapping]] = ..., conversation: _Optional[_Union[Conversation, _Mapping]] = ...) -> None: ...

class LabelScore(_message.Message):
    __slots__ = ("label", "probability")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    label: str
    probability: float
    def __init__(self, label: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...
