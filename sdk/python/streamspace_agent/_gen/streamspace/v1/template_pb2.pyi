from google.protobuf import empty_pb2 as _empty_pb2
from streamspace_agent._gen.streamspace.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Template(_message.Message):
    __slots__ = ("name", "display_name", "description", "image", "command", "ports", "streaming_port", "env", "default_resources", "persistent_home", "timeouts", "home_size", "run_as_root")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    STREAMING_PORT_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_RESOURCES_FIELD_NUMBER: _ClassVar[int]
    PERSISTENT_HOME_FIELD_NUMBER: _ClassVar[int]
    TIMEOUTS_FIELD_NUMBER: _ClassVar[int]
    HOME_SIZE_FIELD_NUMBER: _ClassVar[int]
    RUN_AS_ROOT_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    description: str
    image: str
    command: _containers.RepeatedScalarFieldContainer[str]
    ports: _containers.RepeatedCompositeFieldContainer[_common_pb2.PortSpec]
    streaming_port: str
    env: _containers.ScalarMap[str, str]
    default_resources: _common_pb2.Resources
    persistent_home: bool
    timeouts: _common_pb2.Timeouts
    home_size: str
    run_as_root: bool
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., description: _Optional[str] = ..., image: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., ports: _Optional[_Iterable[_Union[_common_pb2.PortSpec, _Mapping]]] = ..., streaming_port: _Optional[str] = ..., env: _Optional[_Mapping[str, str]] = ..., default_resources: _Optional[_Union[_common_pb2.Resources, _Mapping]] = ..., persistent_home: _Optional[bool] = ..., timeouts: _Optional[_Union[_common_pb2.Timeouts, _Mapping]] = ..., home_size: _Optional[str] = ..., run_as_root: _Optional[bool] = ...) -> None: ...

class ListTemplatesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTemplatesResponse(_message.Message):
    __slots__ = ("templates",)
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    templates: _containers.RepeatedCompositeFieldContainer[Template]
    def __init__(self, templates: _Optional[_Iterable[_Union[Template, _Mapping]]] = ...) -> None: ...

class GetTemplateRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class PutTemplateRequest(_message.Message):
    __slots__ = ("template",)
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    template: Template
    def __init__(self, template: _Optional[_Union[Template, _Mapping]] = ...) -> None: ...

class DeleteTemplateRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...
