from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FaceRequest(_message.Message):
    __slots__ = ("seed", "psi", "conditions", "mix_seed", "crossover")
    class ConditionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SEED_FIELD_NUMBER: _ClassVar[int]
    PSI_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    MIX_SEED_FIELD_NUMBER: _ClassVar[int]
    CROSSOVER_FIELD_NUMBER: _ClassVar[int]
    seed: int
    psi: float
    conditions: _containers.ScalarMap[str, str]
    mix_seed: int
    crossover: int
    def __init__(self, seed: _Optional[int] = ..., psi: _Optional[float] = ..., conditions: _Optional[_Mapping[str, str]] = ..., mix_seed: _Optional[int] = ..., crossover: _Optional[int] = ...) -> None: ...

class Face(_message.Message):
    __slots__ = ("seed", "psi", "conditions", "model_version", "png", "mix_seed", "crossover")
    class ConditionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SEED_FIELD_NUMBER: _ClassVar[int]
    PSI_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    MIX_SEED_FIELD_NUMBER: _ClassVar[int]
    CROSSOVER_FIELD_NUMBER: _ClassVar[int]
    seed: int
    psi: float
    conditions: _containers.ScalarMap[str, str]
    model_version: str
    png: bytes
    mix_seed: int
    crossover: int
    def __init__(self, seed: _Optional[int] = ..., psi: _Optional[float] = ..., conditions: _Optional[_Mapping[str, str]] = ..., model_version: _Optional[str] = ..., png: _Optional[bytes] = ..., mix_seed: _Optional[int] = ..., crossover: _Optional[int] = ...) -> None: ...

class FacesRequest(_message.Message):
    __slots__ = ("count", "seeds", "psi", "conditions", "mix_seeds", "crossover")
    class ConditionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    PSI_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    MIX_SEEDS_FIELD_NUMBER: _ClassVar[int]
    CROSSOVER_FIELD_NUMBER: _ClassVar[int]
    count: int
    seeds: _containers.RepeatedScalarFieldContainer[int]
    psi: float
    conditions: _containers.ScalarMap[str, str]
    mix_seeds: _containers.RepeatedScalarFieldContainer[int]
    crossover: int
    def __init__(self, count: _Optional[int] = ..., seeds: _Optional[_Iterable[int]] = ..., psi: _Optional[float] = ..., conditions: _Optional[_Mapping[str, str]] = ..., mix_seeds: _Optional[_Iterable[int]] = ..., crossover: _Optional[int] = ...) -> None: ...

class FacesReply(_message.Message):
    __slots__ = ("model_version", "faces")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FACES_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    faces: _containers.RepeatedCompositeFieldContainer[Face]
    def __init__(self, model_version: _Optional[str] = ..., faces: _Optional[_Iterable[_Union[Face, _Mapping]]] = ...) -> None: ...

class ModelRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ConditionValues(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class ModelReply(_message.Message):
    __slots__ = ("version", "alias", "resolution", "precision", "conditions", "num_ws", "max_count", "max_seed", "psi_min", "psi_max", "default_psi")
    class ConditionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ConditionValues
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ConditionValues, _Mapping]] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    NUM_WS_FIELD_NUMBER: _ClassVar[int]
    MAX_COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_SEED_FIELD_NUMBER: _ClassVar[int]
    PSI_MIN_FIELD_NUMBER: _ClassVar[int]
    PSI_MAX_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_PSI_FIELD_NUMBER: _ClassVar[int]
    version: str
    alias: str
    resolution: int
    precision: str
    conditions: _containers.MessageMap[str, ConditionValues]
    num_ws: int
    max_count: int
    max_seed: int
    psi_min: float
    psi_max: float
    default_psi: float
    def __init__(self, version: _Optional[str] = ..., alias: _Optional[str] = ..., resolution: _Optional[int] = ..., precision: _Optional[str] = ..., conditions: _Optional[_Mapping[str, ConditionValues]] = ..., num_ws: _Optional[int] = ..., max_count: _Optional[int] = ..., max_seed: _Optional[int] = ..., psi_min: _Optional[float] = ..., psi_max: _Optional[float] = ..., default_psi: _Optional[float] = ...) -> None: ...
