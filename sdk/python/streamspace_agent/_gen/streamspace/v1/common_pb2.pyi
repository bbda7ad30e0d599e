import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DesiredState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DESIRED_STATE_UNSPECIFIED: _ClassVar[DesiredState]
    DESIRED_STATE_RUNNING: _ClassVar[DesiredState]
    DESIRED_STATE_HIBERNATED: _ClassVar[DesiredState]
    DESIRED_STATE_TERMINATED: _ClassVar[DesiredState]

class SessionPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SESSION_PHASE_UNSPECIFIED: _ClassVar[SessionPhase]
    SESSION_PHASE_PENDING: _ClassVar[SessionPhase]
    SESSION_PHASE_PROVISIONING: _ClassVar[SessionPhase]
    SESSION_PHASE_RUNNING: _ClassVar[SessionPhase]
    SESSION_PHASE_HIBERNATED: _ClassVar[SessionPhase]
    SESSION_PHASE_STOPPED: _ClassVar[SessionPhase]
    SESSION_PHASE_FAILED: _ClassVar[SessionPhase]

class FailureReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE_REASON_UNSPECIFIED: _ClassVar[FailureReason]
    FAILURE_REASON_INVALID: _ClassVar[FailureReason]
    FAILURE_REASON_NOT_FOUND: _ClassVar[FailureReason]
    FAILURE_REASON_CAPACITY: _ClassVar[FailureReason]
    FAILURE_REASON_IMAGE: _ClassVar[FailureReason]
    FAILURE_REASON_UNSCHEDULABLE: _ClassVar[FailureReason]
    FAILURE_REASON_CRASH_LOOP: _ClassVar[FailureReason]
    FAILURE_REASON_PLATFORM: _ClassVar[FailureReason]
    FAILURE_REASON_DEADLINE: _ClassVar[FailureReason]
    FAILURE_REASON_INTERNAL: _ClassVar[FailureReason]
DESIRED_STATE_UNSPECIFIED: DesiredState
DESIRED_STATE_RUNNING: DesiredState
DESIRED_STATE_HIBERNATED: DesiredState
DESIRED_STATE_TERMINATED: DesiredState
SESSION_PHASE_UNSPECIFIED: SessionPhase
SESSION_PHASE_PENDING: SessionPhase
SESSION_PHASE_PROVISIONING: SessionPhase
SESSION_PHASE_RUNNING: SessionPhase
SESSION_PHASE_HIBERNATED: SessionPhase
SESSION_PHASE_STOPPED: SessionPhase
SESSION_PHASE_FAILED: SessionPhase
FAILURE_REASON_UNSPECIFIED: FailureReason
FAILURE_REASON_INVALID: FailureReason
FAILURE_REASON_NOT_FOUND: FailureReason
FAILURE_REASON_CAPACITY: FailureReason
FAILURE_REASON_IMAGE: FailureReason
FAILURE_REASON_UNSCHEDULABLE: FailureReason
FAILURE_REASON_CRASH_LOOP: FailureReason
FAILURE_REASON_PLATFORM: FailureReason
FAILURE_REASON_DEADLINE: FailureReason
FAILURE_REASON_INTERNAL: FailureReason

class ResourceList(_message.Message):
    __slots__ = ("cpu", "memory")
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    cpu: str
    memory: str
    def __init__(self, cpu: _Optional[str] = ..., memory: _Optional[str] = ...) -> None: ...

class Resources(_message.Message):
    __slots__ = ("requests", "limits")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    requests: ResourceList
    limits: ResourceList
    def __init__(self, requests: _Optional[_Union[ResourceList, _Mapping]] = ..., limits: _Optional[_Union[ResourceList, _Mapping]] = ...) -> None: ...

class PortSpec(_message.Message):
    __slots__ = ("name", "container_port")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_PORT_FIELD_NUMBER: _ClassVar[int]
    name: str
    container_port: int
    def __init__(self, name: _Optional[str] = ..., container_port: _Optional[int] = ...) -> None: ...

class Capacity(_message.Message):
    __slots__ = ("max_sessions", "cpu_millis", "memory_bytes")
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    CPU_MILLIS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_sessions: int
    cpu_millis: int
    memory_bytes: int
    def __init__(self, max_sessions: _Optional[int] = ..., cpu_millis: _Optional[int] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class Condition(_message.Message):
    __slots__ = ("type", "status", "reason", "message")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    type: str
    status: str
    reason: str
    message: str
    def __init__(self, type: _Optional[str] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Timeouts(_message.Message):
    __slots__ = ("idle_timeout", "max_session_duration")
    IDLE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSION_DURATION_FIELD_NUMBER: _ClassVar[int]
    idle_timeout: _duration_pb2.Duration
    max_session_duration: _duration_pb2.Duration
    def __init__(self, idle_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_session_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...
