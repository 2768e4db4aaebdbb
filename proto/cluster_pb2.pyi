from . import objects_pb2 as _objects_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InitRequest(_message.Message):
    __slots__ = ("store_url", "advertise_addr", "listen_addr")
    STORE_URL_FIELD_NUMBER: _ClassVar[int]
    ADVERTISE_ADDR_FIELD_NUMBER: _ClassVar[int]
    LISTEN_ADDR_FIELD_NUMBER: _ClassVar[int]
    store_url: str
    advertise_addr: str
    listen_addr: str
    def __init__(self, store_url: _Optional[str] = ..., advertise_addr: _Optional[str] = ..., listen_addr: _Optional[str] = ...) -> None: ...

class InitResponse(_message.Message):
    __slots__ = ("node_id", "cluster_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    cluster_id: str
    def __init__(self, node_id: _Optional[str] = ..., cluster_id: _Optional[str] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("addr", "token", "advertise_addr", "listen_addr")
    ADDR_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ADVERTISE_ADDR_FIELD_NUMBER: _ClassVar[int]
    LISTEN_ADDR_FIELD_NUMBER: _ClassVar[int]
    addr: str
    token: str
    advertise_addr: str
    listen_addr: str
    def __init__(self, addr: _Optional[str] = ..., token: _Optional[str] = ..., advertise_addr: _Optional[str] = ..., listen_addr: _Optional[str] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("node_id", "role")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    role: str
    def __init__(self, node_id: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class JoinTokensRequest(_message.Message):
    __slots__ = ("rotate",)
    ROTATE_FIELD_NUMBER: _ClassVar[int]
    rotate: str
    def __init__(self, rotate: _Optional[str] = ...) -> None: ...

class JoinTokensResponse(_message.Message):
    __slots__ = ("worker", "manager", "manager_addr")
    WORKER_FIELD_NUMBER: _ClassVar[int]
    MANAGER_FIELD_NUMBER: _ClassVar[int]
    MANAGER_ADDR_FIELD_NUMBER: _ClassVar[int]
    worker: str
    manager: str
    manager_addr: str
    def __init__(self, worker: _Optional[str] = ..., manager: _Optional[str] = ..., manager_addr: _Optional[str] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("is_manager", "node_id", "cluster_id", "store", "nodes", "managers", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    IS_MANAGER_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    MANAGERS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    is_manager: bool
    node_id: str
    cluster_id: str
    store: str
    nodes: int
    managers: int
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, is_manager: _Optional[bool] = ..., node_id: _Optional[str] = ..., cluster_id: _Optional[str] = ..., store: _Optional[str] = ..., nodes: _Optional[int] = ..., managers: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RemoveRequest(_message.Message):
    __slots__ = ("id", "force")
    ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    force: bool
    def __init__(self, id: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class RemoveResponse(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[_objects_pb2.Node]
    def __init__(self, nodes: _Optional[_Iterable[_Union[_objects_pb2.Node, _Mapping]]] = ...) -> None: ...

class UpdateNodeRequest(_message.Message):
    __slots__ = ("id", "version", "spec")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    id: str
    version: int
    spec: _objects_pb2.NodeSpec
    def __init__(self, id: _Optional[str] = ..., version: _Optional[int] = ..., spec: _Optional[_Union[_objects_pb2.NodeSpec, _Mapping]] = ...) -> None: ...

class CreateServiceRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: _objects_pb2.ServiceSpec
    def __init__(self, spec: _Optional[_Union[_objects_pb2.ServiceSpec, _Mapping]] = ...) -> None: ...

class UpdateServiceRequest(_message.Message):
    __slots__ = ("id", "version", "spec")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    id: str
    version: int
    spec: _objects_pb2.ServiceSpec
    def __init__(self, id: _Optional[str] = ..., version: _Optional[int] = ..., spec: _Optional[_Union[_objects_pb2.ServiceSpec, _Mapping]] = ...) -> None: ...

class ListServicesRequest(_message.Message):
    __slots__ = ("stack",)
    STACK_FIELD_NUMBER: _ClassVar[int]
    stack: str
    def __init__(self, stack: _Optional[str] = ...) -> None: ...

class ServiceSummary(_message.Message):
    __slots__ = ("service", "desired", "running")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    DESIRED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    service: _objects_pb2.Service
    desired: int
    running: int
    def __init__(self, service: _Optional[_Union[_objects_pb2.Service, _Mapping]] = ..., desired: _Optional[int] = ..., running: _Optional[int] = ...) -> None: ...

class ListServicesResponse(_message.Message):
    __slots__ = ("services",)
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[ServiceSummary]
    def __init__(self, services: _Optional[_Iterable[_Union[ServiceSummary, _Mapping]]] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("service", "node", "stack", "running_only")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    STACK_FIELD_NUMBER: _ClassVar[int]
    RUNNING_ONLY_FIELD_NUMBER: _ClassVar[int]
    service: str
    node: str
    stack: str
    running_only: bool
    def __init__(self, service: _Optional[str] = ..., node: _Optional[str] = ..., stack: _Optional[str] = ..., running_only: _Optional[bool] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[_objects_pb2.Task]
    def __init__(self, tasks: _Optional[_Iterable[_Union[_objects_pb2.Task, _Mapping]]] = ...) -> None: ...

class DeployStackRequest(_message.Message):
    __slots__ = ("name", "services", "networks", "secrets", "configs", "prune")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    CONFIGS_FIELD_NUMBER: _ClassVar[int]
    PRUNE_FIELD_NUMBER: _ClassVar[int]
    name: str
    services: _containers.RepeatedCompositeFieldContainer[_objects_pb2.ServiceSpec]
    networks: _containers.RepeatedCompositeFieldContainer[_objects_pb2.NetworkSpec]
    secrets: _containers.RepeatedCompositeFieldContainer[_objects_pb2.SecretSpec]
    configs: _containers.RepeatedCompositeFieldContainer[_objects_pb2.ConfigSpec]
    prune: bool
    def __init__(self, name: _Optional[str] = ..., services: _Optional[_Iterable[_Union[_objects_pb2.ServiceSpec, _Mapping]]] = ..., networks: _Optional[_Iterable[_Union[_objects_pb2.NetworkSpec, _Mapping]]] = ..., secrets: _Optional[_Iterable[_Union[_objects_pb2.SecretSpec, _Mapping]]] = ..., configs: _Optional[_Iterable[_Union[_objects_pb2.ConfigSpec, _Mapping]]] = ..., prune: _Optional[bool] = ...) -> None: ...

class DeployStackResponse(_message.Message):
    __slots__ = ("created", "updated", "unchanged", "removed")
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    created: _containers.RepeatedScalarFieldContainer[str]
    updated: _containers.RepeatedScalarFieldContainer[str]
    unchanged: _containers.RepeatedScalarFieldContainer[str]
    removed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, created: _Optional[_Iterable[str]] = ..., updated: _Optional[_Iterable[str]] = ..., unchanged: _Optional[_Iterable[str]] = ..., removed: _Optional[_Iterable[str]] = ...) -> None: ...

class ListStacksRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StackSummary(_message.Message):
    __slots__ = ("name", "services")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    name: str
    services: int
    def __init__(self, name: _Optional[str] = ..., services: _Optional[int] = ...) -> None: ...

class ListStacksResponse(_message.Message):
    __slots__ = ("stacks",)
    STACKS_FIELD_NUMBER: _ClassVar[int]
    stacks: _containers.RepeatedCompositeFieldContainer[StackSummary]
    def __init__(self, stacks: _Optional[_Iterable[_Union[StackSummary, _Mapping]]] = ...) -> None: ...

class RemoveStackRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RemoveStackResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, removed: _Optional[_Iterable[str]] = ...) -> None: ...

class ServiceLogsRequest(_message.Message):
    __slots__ = ("service", "follow", "tail")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    service: str
    follow: bool
    tail: int
    def __init__(self, service: _Optional[str] = ..., follow: _Optional[bool] = ..., tail: _Optional[int] = ...) -> None: ...

class ServiceLogEntry(_message.Message):
    __slots__ = ("task_id", "task_name", "node_id", "stream", "data", "time")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    task_name: str
    node_id: str
    stream: str
    data: bytes
    time: str
    def __init__(self, task_id: _Optional[str] = ..., task_name: _Optional[str] = ..., node_id: _Optional[str] = ..., stream: _Optional[str] = ..., data: _Optional[bytes] = ..., time: _Optional[str] = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("node_id", "description", "addr")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    description: _objects_pb2.NodeDescription
    addr: str
    def __init__(self, node_id: _Optional[str] = ..., description: _Optional[_Union[_objects_pb2.NodeDescription, _Mapping]] = ..., addr: _Optional[str] = ...) -> None: ...

class Assignments(_message.Message):
    __slots__ = ("type", "update", "remove", "secrets", "configs")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        COMPLETE: _ClassVar[Assignments.Type]
        INCREMENTAL: _ClassVar[Assignments.Type]
    COMPLETE: Assignments.Type
    INCREMENTAL: Assignments.Type
    TYPE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    CONFIGS_FIELD_NUMBER: _ClassVar[int]
    type: Assignments.Type
    update: _containers.RepeatedCompositeFieldContainer[_objects_pb2.Task]
    remove: _containers.RepeatedScalarFieldContainer[str]
    secrets: _containers.RepeatedCompositeFieldContainer[_objects_pb2.Secret]
    configs: _containers.RepeatedCompositeFieldContainer[_objects_pb2.Config]
    def __init__(self, type: _Optional[_Union[Assignments.Type, str]] = ..., update: _Optional[_Iterable[_Union[_objects_pb2.Task, _Mapping]]] = ..., remove: _Optional[_Iterable[str]] = ..., secrets: _Optional[_Iterable[_Union[_objects_pb2.Secret, _Mapping]]] = ..., configs: _Optional[_Iterable[_Union[_objects_pb2.Config, _Mapping]]] = ...) -> None: ...

class SessionMessage(_message.Message):
    __slots__ = ("session_id", "heartbeat_period_ms", "assignments", "network", "managers")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_PERIOD_MS_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    MANAGERS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    heartbeat_period_ms: int
    assignments: Assignments
    network: NetworkState
    managers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_id: _Optional[str] = ..., heartbeat_period_ms: _Optional[int] = ..., assignments: _Optional[_Union[Assignments, _Mapping]] = ..., network: _Optional[_Union[NetworkState, _Mapping]] = ..., managers: _Optional[_Iterable[str]] = ...) -> None: ...

class NetworkState(_message.Message):
    __slots__ = ("version", "peers", "networks", "node_attachments", "endpoints", "base_version", "removed_peers", "removed_networks", "removed_endpoints")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    NODE_ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    REMOVED_PEERS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_NETWORKS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    version: int
    peers: _containers.RepeatedCompositeFieldContainer[Peer]
    networks: _containers.RepeatedCompositeFieldContainer[_objects_pb2.Network]
    node_attachments: _containers.RepeatedCompositeFieldContainer[_objects_pb2.NetworkAttachment]
    endpoints: _containers.RepeatedCompositeFieldContainer[ServiceEndpoint]
    base_version: int
    removed_peers: _containers.RepeatedScalarFieldContainer[str]
    removed_networks: _containers.RepeatedScalarFieldContainer[str]
    removed_endpoints: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[int] = ..., peers: _Optional[_Iterable[_Union[Peer, _Mapping]]] = ..., networks: _Optional[_Iterable[_Union[_objects_pb2.Network, _Mapping]]] = ..., node_attachments: _Optional[_Iterable[_Union[_objects_pb2.NetworkAttachment, _Mapping]]] = ..., endpoints: _Optional[_Iterable[_Union[ServiceEndpoint, _Mapping]]] = ..., base_version: _Optional[int] = ..., removed_peers: _Optional[_Iterable[str]] = ..., removed_networks: _Optional[_Iterable[str]] = ..., removed_endpoints: _Optional[_Iterable[str]] = ...) -> None: ...

class Peer(_message.Message):
    __slots__ = ("node_id", "addr", "ready")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    addr: str
    ready: bool
    def __init__(self, node_id: _Optional[str] = ..., addr: _Optional[str] = ..., ready: _Optional[bool] = ...) -> None: ...

class ServiceEndpoint(_message.Message):
    __slots__ = ("service_id", "service_name", "aliases", "mode", "ports", "vips", "tasks", "removed_tasks")
    SERVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    VIPS_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_TASKS_FIELD_NUMBER: _ClassVar[int]
    service_id: str
    service_name: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    mode: str
    ports: _containers.RepeatedCompositeFieldContainer[_objects_pb2.PortConfig]
    vips: _containers.RepeatedCompositeFieldContainer[VirtualIP]
    tasks: _containers.RepeatedCompositeFieldContainer[EndpointTask]
    removed_tasks: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, service_id: _Optional[str] = ..., service_name: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ..., mode: _Optional[str] = ..., ports: _Optional[_Iterable[_Union[_objects_pb2.PortConfig, _Mapping]]] = ..., vips: _Optional[_Iterable[_Union[VirtualIP, _Mapping]]] = ..., tasks: _Optional[_Iterable[_Union[EndpointTask, _Mapping]]] = ..., removed_tasks: _Optional[_Iterable[str]] = ...) -> None: ...

class VirtualIP(_message.Message):
    __slots__ = ("network_id", "addr")
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    network_id: str
    addr: str
    def __init__(self, network_id: _Optional[str] = ..., addr: _Optional[str] = ...) -> None: ...

class EndpointTask(_message.Message):
    __slots__ = ("task_id", "node_id", "name", "networks")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    node_id: str
    name: str
    networks: _containers.RepeatedCompositeFieldContainer[_objects_pb2.NetworkAttachment]
    def __init__(self, task_id: _Optional[str] = ..., node_id: _Optional[str] = ..., name: _Optional[str] = ..., networks: _Optional[_Iterable[_Union[_objects_pb2.NetworkAttachment, _Mapping]]] = ...) -> None: ...

class SessionUp(_message.Message):
    __slots__ = ("open", "heartbeat")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    open: SessionRequest
    heartbeat: Heartbeat
    def __init__(self, open: _Optional[_Union[SessionRequest, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TaskStatusUpdate(_message.Message):
    __slots__ = ("task_id", "status")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    status: _objects_pb2.TaskStatus
    def __init__(self, task_id: _Optional[str] = ..., status: _Optional[_Union[_objects_pb2.TaskStatus, _Mapping]] = ...) -> None: ...

class UpdateTaskStatusRequest(_message.Message):
    __slots__ = ("node_id", "session_id", "updates")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    session_id: str
    updates: _containers.RepeatedCompositeFieldContainer[TaskStatusUpdate]
    def __init__(self, node_id: _Optional[str] = ..., session_id: _Optional[str] = ..., updates: _Optional[_Iterable[_Union[TaskStatusUpdate, _Mapping]]] = ...) -> None: ...

class UpdateTaskStatusResponse(_message.Message):
    __slots__ = ("refused",)
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    refused: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, refused: _Optional[_Iterable[str]] = ...) -> None: ...
