from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_ROLE_WORKER: _ClassVar[NodeRole]
    NODE_ROLE_MANAGER: _ClassVar[NodeRole]

class NodeAvailability(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_AVAILABILITY_ACTIVE: _ClassVar[NodeAvailability]
    NODE_AVAILABILITY_PAUSE: _ClassVar[NodeAvailability]
    NODE_AVAILABILITY_DRAIN: _ClassVar[NodeAvailability]

class NodeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_STATE_UNKNOWN: _ClassVar[NodeState]
    NODE_STATE_DOWN: _ClassVar[NodeState]
    NODE_STATE_READY: _ClassVar[NodeState]
    NODE_STATE_DISCONNECTED: _ClassVar[NodeState]

class RestartCondition(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESTART_CONDITION_ANY: _ClassVar[RestartCondition]
    RESTART_CONDITION_ON_FAILURE: _ClassVar[RestartCondition]
    RESTART_CONDITION_NONE: _ClassVar[RestartCondition]

class PublishMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PUBLISH_MODE_INGRESS: _ClassVar[PublishMode]
    PUBLISH_MODE_HOST: _ClassVar[PublishMode]

class TaskState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATE_NEW: _ClassVar[TaskState]
    TASK_STATE_PENDING: _ClassVar[TaskState]
    TASK_STATE_ASSIGNED: _ClassVar[TaskState]
    TASK_STATE_ACCEPTED: _ClassVar[TaskState]
    TASK_STATE_PREPARING: _ClassVar[TaskState]
    TASK_STATE_STARTING: _ClassVar[TaskState]
    TASK_STATE_RUNNING: _ClassVar[TaskState]
    TASK_STATE_COMPLETE: _ClassVar[TaskState]
    TASK_STATE_SHUTDOWN: _ClassVar[TaskState]
    TASK_STATE_FAILED: _ClassVar[TaskState]
    TASK_STATE_REJECTED: _ClassVar[TaskState]
    TASK_STATE_REMOVE: _ClassVar[TaskState]
    TASK_STATE_ORPHANED: _ClassVar[TaskState]
NODE_ROLE_WORKER: NodeRole
NODE_ROLE_MANAGER: NodeRole
NODE_AVAILABILITY_ACTIVE: NodeAvailability
NODE_AVAILABILITY_PAUSE: NodeAvailability
NODE_AVAILABILITY_DRAIN: NodeAvailability
NODE_STATE_UNKNOWN: NodeState
NODE_STATE_DOWN: NodeState
NODE_STATE_READY: NodeState
NODE_STATE_DISCONNECTED: NodeState
RESTART_CONDITION_ANY: RestartCondition
RESTART_CONDITION_ON_FAILURE: RestartCondition
RESTART_CONDITION_NONE: RestartCondition
PUBLISH_MODE_INGRESS: PublishMode
PUBLISH_MODE_HOST: PublishMode
TASK_STATE_NEW: TaskState
TASK_STATE_PENDING: TaskState
TASK_STATE_ASSIGNED: TaskState
TASK_STATE_ACCEPTED: TaskState
TASK_STATE_PREPARING: TaskState
TASK_STATE_STARTING: TaskState
TASK_STATE_RUNNING: TaskState
TASK_STATE_COMPLETE: TaskState
TASK_STATE_SHUTDOWN: TaskState
TASK_STATE_FAILED: TaskState
TASK_STATE_REJECTED: TaskState
TASK_STATE_REMOVE: TaskState
TASK_STATE_ORPHANED: TaskState

class Meta(_message.Message):
    __slots__ = ("version", "created_at", "updated_at")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    version: int
    created_at: str
    updated_at: str
    def __init__(self, version: _Optional[int] = ..., created_at: _Optional[str] = ..., updated_at: _Optional[str] = ...) -> None: ...

class NodeSpec(_message.Message):
    __slots__ = ("name", "labels", "desired_role", "availability")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DESIRED_ROLE_FIELD_NUMBER: _ClassVar[int]
    AVAILABILITY_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.ScalarMap[str, str]
    desired_role: NodeRole
    availability: NodeAvailability
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., desired_role: _Optional[_Union[NodeRole, str]] = ..., availability: _Optional[_Union[NodeAvailability, str]] = ...) -> None: ...

class Resources(_message.Message):
    __slots__ = ("nano_cpus", "memory_bytes", "pids")
    NANO_CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    nano_cpus: int
    memory_bytes: int
    pids: int
    def __init__(self, nano_cpus: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., pids: _Optional[int] = ...) -> None: ...

class NodeDescription(_message.Message):
    __slots__ = ("hostname", "os", "architecture", "resources", "engine_version", "engine_labels")
    class EngineLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    ENGINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENGINE_LABELS_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    os: str
    architecture: str
    resources: Resources
    engine_version: str
    engine_labels: _containers.ScalarMap[str, str]
    def __init__(self, hostname: _Optional[str] = ..., os: _Optional[str] = ..., architecture: _Optional[str] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., engine_version: _Optional[str] = ..., engine_labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("state", "message", "addr")
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    state: NodeState
    message: str
    addr: str
    def __init__(self, state: _Optional[_Union[NodeState, str]] = ..., message: _Optional[str] = ..., addr: _Optional[str] = ...) -> None: ...

class ManagerStatus(_message.Message):
    __slots__ = ("leader", "reachability", "addr")
    LEADER_FIELD_NUMBER: _ClassVar[int]
    REACHABILITY_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    leader: bool
    reachability: str
    addr: str
    def __init__(self, leader: _Optional[bool] = ..., reachability: _Optional[str] = ..., addr: _Optional[str] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("id", "meta", "spec", "description", "status", "role", "manager_status", "attachments")
    ID_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    MANAGER_STATUS_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    meta: Meta
    spec: NodeSpec
    description: NodeDescription
    status: NodeStatus
    role: NodeRole
    manager_status: ManagerStatus
    attachments: _containers.RepeatedCompositeFieldContainer[NetworkAttachment]
    def __init__(self, id: _Optional[str] = ..., meta: _Optional[_Union[Meta, _Mapping]] = ..., spec: _Optional[_Union[NodeSpec, _Mapping]] = ..., description: _Optional[_Union[NodeDescription, _Mapping]] = ..., status: _Optional[_Union[NodeStatus, _Mapping]] = ..., role: _Optional[_Union[NodeRole, str]] = ..., manager_status: _Optional[_Union[ManagerStatus, _Mapping]] = ..., attachments: _Optional[_Iterable[_Union[NetworkAttachment, _Mapping]]] = ...) -> None: ...

class Mount(_message.Message):
    __slots__ = ("type", "source", "target", "read_only", "tmpfs_size_bytes")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    TMPFS_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    type: str
    source: str
    target: str
    read_only: bool
    tmpfs_size_bytes: int
    def __init__(self, type: _Optional[str] = ..., source: _Optional[str] = ..., target: _Optional[str] = ..., read_only: _Optional[bool] = ..., tmpfs_size_bytes: _Optional[int] = ...) -> None: ...

class HealthCheck(_message.Message):
    __slots__ = ("test", "interval_ns", "timeout_ns", "retries", "start_period_ns")
    TEST_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_NS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_NS_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    START_PERIOD_NS_FIELD_NUMBER: _ClassVar[int]
    test: _containers.RepeatedScalarFieldContainer[str]
    interval_ns: int
    timeout_ns: int
    retries: int
    start_period_ns: int
    def __init__(self, test: _Optional[_Iterable[str]] = ..., interval_ns: _Optional[int] = ..., timeout_ns: _Optional[int] = ..., retries: _Optional[int] = ..., start_period_ns: _Optional[int] = ...) -> None: ...

class FileReference(_message.Message):
    __slots__ = ("name", "target", "uid", "gid", "mode")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    name: str
    target: str
    uid: int
    gid: int
    mode: int
    def __init__(self, name: _Optional[str] = ..., target: _Optional[str] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., mode: _Optional[int] = ...) -> None: ...

class ContainerSpec(_message.Message):
    __slots__ = ("image", "command", "args", "env", "dir", "user", "hostname", "labels", "mounts", "stop_signal", "stop_grace_period_ns", "healthcheck", "extra_hosts", "secrets", "configs", "command_set", "args_set")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    DIR_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MOUNTS_FIELD_NUMBER: _ClassVar[int]
    STOP_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    STOP_GRACE_PERIOD_NS_FIELD_NUMBER: _ClassVar[int]
    HEALTHCHECK_FIELD_NUMBER: _ClassVar[int]
    EXTRA_HOSTS_FIELD_NUMBER: _ClassVar[int]
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    CONFIGS_FIELD_NUMBER: _ClassVar[int]
    COMMAND_SET_FIELD_NUMBER: _ClassVar[int]
    ARGS_SET_FIELD_NUMBER: _ClassVar[int]
    image: str
    command: _containers.RepeatedScalarFieldContainer[str]
    args: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.RepeatedScalarFieldContainer[str]
    dir: str
    user: str
    hostname: str
    labels: _containers.ScalarMap[str, str]
    mounts: _containers.RepeatedCompositeFieldContainer[Mount]
    stop_signal: str
    stop_grace_period_ns: int
    healthcheck: HealthCheck
    extra_hosts: _containers.RepeatedScalarFieldContainer[str]
    secrets: _containers.RepeatedCompositeFieldContainer[FileReference]
    configs: _containers.RepeatedCompositeFieldContainer[FileReference]
    command_set: bool
    args_set: bool
    def __init__(self, image: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., args: _Optional[_Iterable[str]] = ..., env: _Optional[_Iterable[str]] = ..., dir: _Optional[str] = ..., user: _Optional[str] = ..., hostname: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., mounts: _Optional[_Iterable[_Union[Mount, _Mapping]]] = ..., stop_signal: _Optional[str] = ..., stop_grace_period_ns: _Optional[int] = ..., healthcheck: _Optional[_Union[HealthCheck, _Mapping]] = ..., extra_hosts: _Optional[_Iterable[str]] = ..., secrets: _Optional[_Iterable[_Union[FileReference, _Mapping]]] = ..., configs: _Optional[_Iterable[_Union[FileReference, _Mapping]]] = ..., command_set: _Optional[bool] = ..., args_set: _Optional[bool] = ...) -> None: ...

class ResourceRequirements(_message.Message):
    __slots__ = ("limits", "reservations")
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    RESERVATIONS_FIELD_NUMBER: _ClassVar[int]
    limits: Resources
    reservations: Resources
    def __init__(self, limits: _Optional[_Union[Resources, _Mapping]] = ..., reservations: _Optional[_Union[Resources, _Mapping]] = ...) -> None: ...

class RestartPolicy(_message.Message):
    __slots__ = ("condition", "delay_ns", "max_attempts", "window_ns", "delay_set")
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    DELAY_NS_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_NS_FIELD_NUMBER: _ClassVar[int]
    DELAY_SET_FIELD_NUMBER: _ClassVar[int]
    condition: RestartCondition
    delay_ns: int
    max_attempts: int
    window_ns: int
    delay_set: bool
    def __init__(self, condition: _Optional[_Union[RestartCondition, str]] = ..., delay_ns: _Optional[int] = ..., max_attempts: _Optional[int] = ..., window_ns: _Optional[int] = ..., delay_set: _Optional[bool] = ...) -> None: ...

class PlacementPreference(_message.Message):
    __slots__ = ("spread",)
    SPREAD_FIELD_NUMBER: _ClassVar[int]
    spread: str
    def __init__(self, spread: _Optional[str] = ...) -> None: ...

class Placement(_message.Message):
    __slots__ = ("constraints", "preferences", "max_replicas")
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    PREFERENCES_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    constraints: _containers.RepeatedScalarFieldContainer[str]
    preferences: _containers.RepeatedCompositeFieldContainer[PlacementPreference]
    max_replicas: int
    def __init__(self, constraints: _Optional[_Iterable[str]] = ..., preferences: _Optional[_Iterable[_Union[PlacementPreference, _Mapping]]] = ..., max_replicas: _Optional[int] = ...) -> None: ...

class UpdateConfig(_message.Message):
    __slots__ = ("parallelism", "delay_ns", "failure_action", "monitor_ns", "max_failure_ratio", "order")
    PARALLELISM_FIELD_NUMBER: _ClassVar[int]
    DELAY_NS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_ACTION_FIELD_NUMBER: _ClassVar[int]
    MONITOR_NS_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILURE_RATIO_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    parallelism: int
    delay_ns: int
    failure_action: str
    monitor_ns: int
    max_failure_ratio: float
    order: str
    def __init__(self, parallelism: _Optional[int] = ..., delay_ns: _Optional[int] = ..., failure_action: _Optional[str] = ..., monitor_ns: _Optional[int] = ..., max_failure_ratio: _Optional[float] = ..., order: _Optional[str] = ...) -> None: ...

class TaskSpec(_message.Message):
    __slots__ = ("container", "resources", "restart", "placement", "networks", "force_update")
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    RESTART_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    FORCE_UPDATE_FIELD_NUMBER: _ClassVar[int]
    container: ContainerSpec
    resources: ResourceRequirements
    restart: RestartPolicy
    placement: Placement
    networks: _containers.RepeatedCompositeFieldContainer[NetworkAttachmentConfig]
    force_update: int
    def __init__(self, container: _Optional[_Union[ContainerSpec, _Mapping]] = ..., resources: _Optional[_Union[ResourceRequirements, _Mapping]] = ..., restart: _Optional[_Union[RestartPolicy, _Mapping]] = ..., placement: _Optional[_Union[Placement, _Mapping]] = ..., networks: _Optional[_Iterable[_Union[NetworkAttachmentConfig, _Mapping]]] = ..., force_update: _Optional[int] = ...) -> None: ...

class NetworkAttachmentConfig(_message.Message):
    __slots__ = ("target", "aliases")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    target: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, target: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ...) -> None: ...

class ReplicatedService(_message.Message):
    __slots__ = ("replicas",)
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    replicas: int
    def __init__(self, replicas: _Optional[int] = ...) -> None: ...

class GlobalService(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PortConfig(_message.Message):
    __slots__ = ("name", "protocol", "target_port", "published_port", "publish_mode")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    TARGET_PORT_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_PORT_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_MODE_FIELD_NUMBER: _ClassVar[int]
    name: str
    protocol: str
    target_port: int
    published_port: int
    publish_mode: PublishMode
    def __init__(self, name: _Optional[str] = ..., protocol: _Optional[str] = ..., target_port: _Optional[int] = ..., published_port: _Optional[int] = ..., publish_mode: _Optional[_Union[PublishMode, str]] = ...) -> None: ...

class EndpointSpec(_message.Message):
    __slots__ = ("mode", "ports")
    MODE_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    mode: str
    ports: _containers.RepeatedCompositeFieldContainer[PortConfig]
    def __init__(self, mode: _Optional[str] = ..., ports: _Optional[_Iterable[_Union[PortConfig, _Mapping]]] = ...) -> None: ...

class ServiceSpec(_message.Message):
    __slots__ = ("name", "labels", "task", "replicated", "update", "rollback", "endpoint", "depends_on", "task_history_limit")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    REPLICATED_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    DEPENDS_ON_FIELD_NUMBER: _ClassVar[int]
    TASK_HISTORY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.ScalarMap[str, str]
    task: TaskSpec
    replicated: ReplicatedService
    update: UpdateConfig
    rollback: UpdateConfig
    endpoint: EndpointSpec
    depends_on: _containers.RepeatedScalarFieldContainer[str]
    task_history_limit: int
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., task: _Optional[_Union[TaskSpec, _Mapping]] = ..., replicated: _Optional[_Union[ReplicatedService, _Mapping]] = ..., update: _Optional[_Union[UpdateConfig, _Mapping]] = ..., rollback: _Optional[_Union[UpdateConfig, _Mapping]] = ..., endpoint: _Optional[_Union[EndpointSpec, _Mapping]] = ..., depends_on: _Optional[_Iterable[str]] = ..., task_history_limit: _Optional[int] = ..., **kwargs) -> None: ...

class EndpointVirtualIP(_message.Message):
    __slots__ = ("network_id", "addr")
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    network_id: str
    addr: str
    def __init__(self, network_id: _Optional[str] = ..., addr: _Optional[str] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("spec", "ports", "virtual_ip", "virtual_ips")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_IP_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_IPS_FIELD_NUMBER: _ClassVar[int]
    spec: EndpointSpec
    ports: _containers.RepeatedCompositeFieldContainer[PortConfig]
    virtual_ip: str
    virtual_ips: _containers.RepeatedCompositeFieldContainer[EndpointVirtualIP]
    def __init__(self, spec: _Optional[_Union[EndpointSpec, _Mapping]] = ..., ports: _Optional[_Iterable[_Union[PortConfig, _Mapping]]] = ..., virtual_ip: _Optional[str] = ..., virtual_ips: _Optional[_Iterable[_Union[EndpointVirtualIP, _Mapping]]] = ...) -> None: ...

class Service(_message.Message):
    __slots__ = ("id", "meta", "spec", "previous_spec", "endpoint")
    ID_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SPEC_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    id: str
    meta: Meta
    spec: ServiceSpec
    previous_spec: ServiceSpec
    endpoint: Endpoint
    def __init__(self, id: _Optional[str] = ..., meta: _Optional[_Union[Meta, _Mapping]] = ..., spec: _Optional[_Union[ServiceSpec, _Mapping]] = ..., previous_spec: _Optional[_Union[ServiceSpec, _Mapping]] = ..., endpoint: _Optional[_Union[Endpoint, _Mapping]] = ...) -> None: ...

class ContainerStatus(_message.Message):
    __slots__ = ("container_id", "pid", "exit_code")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    pid: int
    exit_code: int
    def __init__(self, container_id: _Optional[str] = ..., pid: _Optional[int] = ..., exit_code: _Optional[int] = ...) -> None: ...

class TaskStatus(_message.Message):
    __slots__ = ("state", "timestamp", "message", "err", "container")
    STATE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERR_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    state: TaskState
    timestamp: str
    message: str
    err: str
    container: ContainerStatus
    def __init__(self, state: _Optional[_Union[TaskState, str]] = ..., timestamp: _Optional[str] = ..., message: _Optional[str] = ..., err: _Optional[str] = ..., container: _Optional[_Union[ContainerStatus, _Mapping]] = ...) -> None: ...

class NetworkAttachment(_message.Message):
    __slots__ = ("network_id", "addresses", "aliases")
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    network_id: str
    addresses: _containers.RepeatedScalarFieldContainer[str]
    aliases: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, network_id: _Optional[str] = ..., addresses: _Optional[_Iterable[str]] = ..., aliases: _Optional[_Iterable[str]] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("id", "meta", "service_id", "service_name", "slot", "node_id", "spec", "spec_version", "desired_state", "status", "networks", "endpoint")
    ID_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SPEC_VERSION_FIELD_NUMBER: _ClassVar[int]
    DESIRED_STATE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    id: str
    meta: Meta
    service_id: str
    service_name: str
    slot: int
    node_id: str
    spec: TaskSpec
    spec_version: int
    desired_state: TaskState
    status: TaskStatus
    networks: _containers.RepeatedCompositeFieldContainer[NetworkAttachment]
    endpoint: Endpoint
    def __init__(self, id: _Optional[str] = ..., meta: _Optional[_Union[Meta, _Mapping]] = ..., service_id: _Optional[str] = ..., service_name: _Optional[str] = ..., slot: _Optional[int] = ..., node_id: _Optional[str] = ..., spec: _Optional[_Union[TaskSpec, _Mapping]] = ..., spec_version: _Optional[int] = ..., desired_state: _Optional[_Union[TaskState, str]] = ..., status: _Optional[_Union[TaskStatus, _Mapping]] = ..., networks: _Optional[_Iterable[_Union[NetworkAttachment, _Mapping]]] = ..., endpoint: _Optional[_Union[Endpoint, _Mapping]] = ...) -> None: ...

class NetworkSpec(_message.Message):
    __slots__ = ("name", "labels", "driver", "subnet", "attachable", "internal")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    ATTACHABLE_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.ScalarMap[str, str]
    driver: str
    subnet: str
    attachable: bool
    internal: bool
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., driver: _Optional[str] = ..., subnet: _Optional[str] = ..., attachable: _Optional[bool] = ..., internal: _Optional[bool] = ...) -> None: ...

class Network(_message.Message):
    __slots__ = ("id", "meta", "spec", "subnet", "vni")
    ID_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    VNI_FIELD_NUMBER: _ClassVar[int]
    id: str
    meta: Meta
    spec: NetworkSpec
    subnet: str
    vni: int
    def __init__(self, id: _Optional[str] = ..., meta: _Optional[_Union[Meta, _Mapping]] = ..., spec: _Optional[_Union[NetworkSpec, _Mapping]] = ..., subnet: _Optional[str] = ..., vni: _Optional[int] = ...) -> None: ...

class SecretSpec(_message.Message):
    __slots__ = ("name", "labels", "data")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.ScalarMap[str, str]
    data: bytes
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Secret(_message.Message):
    __slots__ = ("id", "meta", "spec")
    ID_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    id: str
    meta: Meta
    spec: SecretSpec
    def __init__(self, id: _Optional[str] = ..., meta: _Optional[_Union[Meta, _Mapping]] = ..., spec: _Optional[_Union[SecretSpec, _Mapping]] = ...) -> None: ...

class ConfigSpec(_message.Message):
    __slots__ = ("name", "labels", "data")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.ScalarMap[str, str]
    data: bytes
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Config(_message.Message):
    __slots__ = ("id", "meta", "spec")
    ID_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    id: str
    meta: Meta
    spec: ConfigSpec
    def __init__(self, id: _Optional[str] = ..., meta: _Optional[_Union[Meta, _Mapping]] = ..., spec: _Optional[_Union[ConfigSpec, _Mapping]] = ...) -> None: ...

class ClusterSpec(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RootCA(_message.Message):
    __slots__ = ("ca_cert", "ca_key", "ca_cert_digest")
    CA_CERT_FIELD_NUMBER: _ClassVar[int]
    CA_KEY_FIELD_NUMBER: _ClassVar[int]
    CA_CERT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ca_cert: bytes
    ca_key: bytes
    ca_cert_digest: str
    def __init__(self, ca_cert: _Optional[bytes] = ..., ca_key: _Optional[bytes] = ..., ca_cert_digest: _Optional[str] = ...) -> None: ...

class JoinTokens(_message.Message):
    __slots__ = ("worker", "manager")
    WORKER_FIELD_NUMBER: _ClassVar[int]
    MANAGER_FIELD_NUMBER: _ClassVar[int]
    worker: str
    manager: str
    def __init__(self, worker: _Optional[str] = ..., manager: _Optional[str] = ...) -> None: ...

class Cluster(_message.Message):
    __slots__ = ("id", "meta", "spec", "root_ca", "join_tokens")
    ID_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    ROOT_CA_FIELD_NUMBER: _ClassVar[int]
    JOIN_TOKENS_FIELD_NUMBER: _ClassVar[int]
    id: str
    meta: Meta
    spec: ClusterSpec
    root_ca: RootCA
    join_tokens: JoinTokens
    def __init__(self, id: _Optional[str] = ..., meta: _Optional[_Union[Meta, _Mapping]] = ..., spec: _Optional[_Union[ClusterSpec, _Mapping]] = ..., root_ca: _Optional[_Union[RootCA, _Mapping]] = ..., join_tokens: _Optional[_Union[JoinTokens, _Mapping]] = ...) -> None: ...
