import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from streamspace_agent._gen.streamspace.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProtocolVersion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOCOL_VERSION_UNSPECIFIED: _ClassVar[ProtocolVersion]
    PROTOCOL_VERSION_1: _ClassVar[ProtocolVersion]
PROTOCOL_VERSION_UNSPECIFIED: ProtocolVersion
PROTOCOL_VERSION_1: ProtocolVersion

class AgentFrame(_message.Message):
    __slots__ = ("hello", "heartbeat", "ack", "result", "status")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    heartbeat: Heartbeat
    ack: CommandAck
    result: CommandResult
    status: SessionStatus
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., ack: _Optional[_Union[CommandAck, _Mapping]] = ..., result: _Optional[_Union[CommandResult, _Mapping]] = ..., status: _Optional[_Union[SessionStatus, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("agent_id", "platform", "region", "capacity", "agent_version", "protocol_version", "fencing_token", "inventory", "supported_protocol_versions")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    SUPPORTED_PROTOCOL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    platform: str
    region: str
    capacity: _common_pb2.Capacity
    agent_version: str
    protocol_version: ProtocolVersion
    fencing_token: int
    inventory: _containers.RepeatedCompositeFieldContainer[SessionStatus]
    supported_protocol_versions: _containers.RepeatedScalarFieldContainer[ProtocolVersion]
    def __init__(self, agent_id: _Optional[str] = ..., platform: _Optional[str] = ..., region: _Optional[str] = ..., capacity: _Optional[_Union[_common_pb2.Capacity, _Mapping]] = ..., agent_version: _Optional[str] = ..., protocol_version: _Optional[_Union[ProtocolVersion, str]] = ..., fencing_token: _Optional[int] = ..., inventory: _Optional[_Iterable[_Union[SessionStatus, _Mapping]]] = ..., supported_protocol_versions: _Optional[_Iterable[_Union[ProtocolVersion, str]]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("sequence", "in_use", "active_sessions")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    IN_USE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    in_use: _common_pb2.Capacity
    active_sessions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sequence: _Optional[int] = ..., in_use: _Optional[_Union[_common_pb2.Capacity, _Mapping]] = ..., active_sessions: _Optional[_Iterable[str]] = ...) -> None: ...

class CommandAck(_message.Message):
    __slots__ = ("command_id",)
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    def __init__(self, command_id: _Optional[str] = ...) -> None: ...

class CommandResult(_message.Message):
    __slots__ = ("command_id", "succeeded", "failed")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    succeeded: CommandSucceeded
    failed: CommandFailed
    def __init__(self, command_id: _Optional[str] = ..., succeeded: _Optional[_Union[CommandSucceeded, _Mapping]] = ..., failed: _Optional[_Union[CommandFailed, _Mapping]] = ...) -> None: ...

class CommandSucceeded(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CommandFailed(_message.Message):
    __slots__ = ("reason", "message", "retryable")
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    reason: _common_pb2.FailureReason
    message: str
    retryable: bool
    def __init__(self, reason: _Optional[_Union[_common_pb2.FailureReason, str]] = ..., message: _Optional[str] = ..., retryable: _Optional[bool] = ...) -> None: ...

class SessionStatus(_message.Message):
    __slots__ = ("session_id", "phase", "url", "reason", "message", "workload", "observed_at")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_AT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    phase: _common_pb2.SessionPhase
    url: str
    reason: _common_pb2.FailureReason
    message: str
    workload: str
    observed_at: _timestamp_pb2.Timestamp
    def __init__(self, session_id: _Optional[str] = ..., phase: _Optional[_Union[_common_pb2.SessionPhase, str]] = ..., url: _Optional[str] = ..., reason: _Optional[_Union[_common_pb2.FailureReason, str]] = ..., message: _Optional[str] = ..., workload: _Optional[str] = ..., observed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ControlFrame(_message.Message):
    __slots__ = ("welcome", "command", "drain", "heartbeat_ack")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_ACK_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    command: Command
    drain: Drain
    heartbeat_ack: HeartbeatAck
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., command: _Optional[_Union[Command, _Mapping]] = ..., drain: _Optional[_Union[Drain, _Mapping]] = ..., heartbeat_ack: _Optional[_Union[HeartbeatAck, _Mapping]] = ...) -> None: ...

class HeartbeatAck(_message.Message):
    __slots__ = ("sequence",)
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    def __init__(self, sequence: _Optional[int] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("heartbeat_interval", "max_in_flight", "max_message_bytes", "protocol_version", "server_version")
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval: _duration_pb2.Duration
    max_in_flight: int
    max_message_bytes: int
    protocol_version: ProtocolVersion
    server_version: str
    def __init__(self, heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_in_flight: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., protocol_version: _Optional[_Union[ProtocolVersion, str]] = ..., server_version: _Optional[str] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("command_id", "session_id", "session_generation", "deadline", "trace_context", "start", "stop", "hibernate", "wake")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_GENERATION_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    HIBERNATE_FIELD_NUMBER: _ClassVar[int]
    WAKE_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    session_id: str
    session_generation: int
    deadline: _timestamp_pb2.Timestamp
    trace_context: _containers.ScalarMap[str, str]
    start: StartSession
    stop: StopSession
    hibernate: HibernateSession
    wake: WakeSession
    def __init__(self, command_id: _Optional[str] = ..., session_id: _Optional[str] = ..., session_generation: _Optional[int] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., trace_context: _Optional[_Mapping[str, str]] = ..., start: _Optional[_Union[StartSession, _Mapping]] = ..., stop: _Optional[_Union[StopSession, _Mapping]] = ..., hibernate: _Optional[_Union[HibernateSession, _Mapping]] = ..., wake: _Optional[_Union[WakeSession, _Mapping]] = ...) -> None: ...

class StartSession(_message.Message):
    __slots__ = ("user", "template", "workload")
    USER_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    user: str
    template: str
    workload: WorkloadSpec
    def __init__(self, user: _Optional[str] = ..., template: _Optional[str] = ..., workload: _Optional[_Union[WorkloadSpec, _Mapping]] = ...) -> None: ...

class WorkloadSpec(_message.Message):
    __slots__ = ("image", "command", "ports", "streaming_port", "env", "resources", "persistent_home", "home_size", "timeouts", "run_as_root")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    STREAMING_PORT_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    PERSISTENT_HOME_FIELD_NUMBER: _ClassVar[int]
    HOME_SIZE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUTS_FIELD_NUMBER: _ClassVar[int]
    RUN_AS_ROOT_FIELD_NUMBER: _ClassVar[int]
    image: str
    command: _containers.RepeatedScalarFieldContainer[str]
    ports: _containers.RepeatedCompositeFieldContainer[_common_pb2.PortSpec]
    streaming_port: str
    env: _containers.ScalarMap[str, str]
    resources: _common_pb2.Resources
    persistent_home: bool
    home_size: str
    timeouts: _common_pb2.Timeouts
    run_as_root: bool
    def __init__(self, image: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., ports: _Optional[_Iterable[_Union[_common_pb2.PortSpec, _Mapping]]] = ..., streaming_port: _Optional[str] = ..., env: _Optional[_Mapping[str, str]] = ..., resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., persistent_home: _Optional[bool] = ..., home_size: _Optional[str] = ..., timeouts: _Optional[_Union[_common_pb2.Timeouts, _Mapping]] = ..., run_as_root: _Optional[bool] = ...) -> None: ...

class StopSession(_message.Message):
    __slots__ = ("delete_home",)
    DELETE_HOME_FIELD_NUMBER: _ClassVar[int]
    delete_home: bool
    def __init__(self, delete_home: _Optional[bool] = ...) -> None: ...

class HibernateSession(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WakeSession(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Drain(_message.Message):
    __slots__ = ("reason", "reconnect_after")
    REASON_FIELD_NUMBER: _ClassVar[int]
    RECONNECT_AFTER_FIELD_NUMBER: _ClassVar[int]
    reason: str
    reconnect_after: _duration_pb2.Duration
    def __init__(self, reason: _Optional[str] = ..., reconnect_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...
