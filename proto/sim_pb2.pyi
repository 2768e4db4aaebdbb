from . import cluster_pb2 as _cluster_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SessionMessageVersions(_message.Message):
    __slots__ = ("session_id", "heartbeat_period_ms", "assignments", "network", "managers")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_PERIOD_MS_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    MANAGERS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    heartbeat_period_ms: int
    assignments: _cluster_pb2.Assignments
    network: NetworkStateVersions
    managers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_id: _Optional[str] = ..., heartbeat_period_ms: _Optional[int] = ..., assignments: _Optional[_Union[_cluster_pb2.Assignments, _Mapping]] = ..., network: _Optional[_Union[NetworkStateVersions, _Mapping]] = ..., managers: _Optional[_Iterable[str]] = ...) -> None: ...

class NetworkStateVersions(_message.Message):
    __slots__ = ("version", "base_version")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    base_version: int
    def __init__(self, version: _Optional[int] = ..., base_version: _Optional[int] = ...) -> None: ...
