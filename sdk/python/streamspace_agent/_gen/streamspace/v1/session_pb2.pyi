import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from streamspace_agent._gen.streamspace.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentSelector(_message.Message):
    __slots__ = ("platform", "region")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    platform: str
    region: str
    def __init__(self, platform: _Optional[str] = ..., region: _Optional[str] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("name", "user", "template", "desired_state", "phase", "url", "agent_id", "generation", "resources", "persistent_home", "timeouts", "selector", "conditions", "failure_reason", "message", "workload", "create_time", "update_time", "last_activity_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    DESIRED_STATE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    PERSISTENT_HOME_FIELD_NUMBER: _ClassVar[int]
    TIMEOUTS_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVITY_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    user: str
    template: str
    desired_state: _common_pb2.DesiredState
    phase: _common_pb2.SessionPhase
    url: str
    agent_id: str
    generation: int
    resources: _common_pb2.Resources
    persistent_home: bool
    timeouts: _common_pb2.Timeouts
    selector: AgentSelector
    conditions: _containers.RepeatedCompositeFieldContainer[_common_pb2.Condition]
    failure_reason: _common_pb2.FailureReason
    message: str
    workload: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    last_activity_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., user: _Optional[str] = ..., template: _Optional[str] = ..., desired_state: _Optional[_Union[_common_pb2.DesiredState, str]] = ..., phase: _Optional[_Union[_common_pb2.SessionPhase, str]] = ..., url: _Optional[str] = ..., agent_id: _Optional[str] = ..., generation: _Optional[int] = ..., resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., persistent_home: _Optional[bool] = ..., timeouts: _Optional[_Union[_common_pb2.Timeouts, _Mapping]] = ..., selector: _Optional[_Union[AgentSelector, _Mapping]] = ..., conditions: _Optional[_Iterable[_Union[_common_pb2.Condition, _Mapping]]] = ..., failure_reason: _Optional[_Union[_common_pb2.FailureReason, str]] = ..., message: _Optional[str] = ..., workload: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_activity_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ("name", "template", "user", "resources", "persistent_home", "timeouts", "selector", "desired_state")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    PERSISTENT_HOME_FIELD_NUMBER: _ClassVar[int]
    TIMEOUTS_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    DESIRED_STATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    template: str
    user: str
    resources: _common_pb2.Resources
    persistent_home: bool
    timeouts: _common_pb2.Timeouts
    selector: AgentSelector
    desired_state: _common_pb2.DesiredState
    def __init__(self, name: _Optional[str] = ..., template: _Optional[str] = ..., user: _Optional[str] = ..., resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., persistent_home: _Optional[bool] = ..., timeouts: _Optional[_Union[_common_pb2.Timeouts, _Mapping]] = ..., selector: _Optional[_Union[AgentSelector, _Mapping]] = ..., desired_state: _Optional[_Union[_common_pb2.DesiredState, str]] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ("user", "phase", "page_size", "page_token")
    USER_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    user: str
    phase: _common_pb2.SessionPhase
    page_size: int
    page_token: str
    def __init__(self, user: _Optional[str] = ..., phase: _Optional[_Union[_common_pb2.SessionPhase, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions", "next_page_token")
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[Session]
    next_page_token: str
    def __init__(self, sessions: _Optional[_Iterable[_Union[Session, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchSessionsRequest(_message.Message):
    __slots__ = ("user", "send_initial")
    USER_FIELD_NUMBER: _ClassVar[int]
    SEND_INITIAL_FIELD_NUMBER: _ClassVar[int]
    user: str
    send_initial: bool
    def __init__(self, user: _Optional[str] = ..., send_initial: _Optional[bool] = ...) -> None: ...

class SessionEvent(_message.Message):
    __slots__ = ("type", "session")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[SessionEvent.Type]
        TYPE_ADDED: _ClassVar[SessionEvent.Type]
        TYPE_MODIFIED: _ClassVar[SessionEvent.Type]
        TYPE_DELETED: _ClassVar[SessionEvent.Type]
    TYPE_UNSPECIFIED: SessionEvent.Type
    TYPE_ADDED: SessionEvent.Type
    TYPE_MODIFIED: SessionEvent.Type
    TYPE_DELETED: SessionEvent.Type
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    type: SessionEvent.Type
    session: Session
    def __init__(self, type: _Optional[_Union[SessionEvent.Type, str]] = ..., session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...

class HibernateSessionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class WakeSessionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class TouchSessionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteSessionRequest(_message.Message):
    __slots__ = ("name", "delete_home")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DELETE_HOME_FIELD_NUMBER: _ClassVar[int]
    name: str
    delete_home: bool
    def __init__(self, name: _Optional[str] = ..., delete_home: _Optional[bool] = ...) -> None: ...
