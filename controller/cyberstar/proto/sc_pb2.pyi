from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Code(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OK: _ClassVar[Code]
    UNKNOWN_TENANT: _ClassVar[Code]
    POOL_EXHAUSTED: _ClassVar[Code]
    MALFORMED: _ClassVar[Code]
    WRONG_SHARD: _ClassVar[Code]
    NOT_HEAD: _ClassVar[Code]
    UNAVAILABLE: _ClassVar[Code]
    INTERNAL: _ClassVar[Code]
    NOT_FOUND: _ClassVar[Code]
    BUSY: _ClassVar[Code]
OK: Code
UNKNOWN_TENANT: Code
POOL_EXHAUSTED: Code
MALFORMED: Code
WRONG_SHARD: Code
NOT_HEAD: Code
UNAVAILABLE: Code
INTERNAL: Code
NOT_FOUND: Code
BUSY: Code

class Status(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: Code
    message: str
    def __init__(self, code: _Optional[_Union[Code, str]] = ..., message: _Optional[str] = ...) -> None: ...

class Flow(_message.Message):
    __slots__ = ("tenant_id", "ingress_port", "vni", "src_addr", "dst_addr", "protocol", "src_port", "dst_port")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    INGRESS_PORT_FIELD_NUMBER: _ClassVar[int]
    VNI_FIELD_NUMBER: _ClassVar[int]
    SRC_ADDR_FIELD_NUMBER: _ClassVar[int]
    DST_ADDR_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    SRC_PORT_FIELD_NUMBER: _ClassVar[int]
    DST_PORT_FIELD_NUMBER: _ClassVar[int]
    tenant_id: int
    ingress_port: int
    vni: int
    src_addr: int
    dst_addr: int
    protocol: int
    src_port: int
    dst_port: int
    def __init__(self, tenant_id: _Optional[int] = ..., ingress_port: _Optional[int] = ..., vni: _Optional[int] = ..., src_addr: _Optional[int] = ..., dst_addr: _Optional[int] = ..., protocol: _Optional[int] = ..., src_port: _Optional[int] = ..., dst_port: _Optional[int] = ...) -> None: ...

class RuleRequest(_message.Message):
    __slots__ = ("request_id", "flow", "shard")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FLOW_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    flow: Flow
    shard: str
    def __init__(self, request_id: _Optional[int] = ..., flow: _Optional[_Union[Flow, _Mapping]] = ..., shard: _Optional[str] = ...) -> None: ...

class RuleBatch(_message.Message):
    __slots__ = ("requests", "packed_layout")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    PACKED_LAYOUT_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[RuleRequest]
    packed_layout: int
    def __init__(self, requests: _Optional[_Iterable[_Union[RuleRequest, _Mapping]]] = ..., packed_layout: _Optional[int] = ...) -> None: ...

class MatchField(_message.Message):
    __slots__ = ("name", "value", "prefix_len", "mask")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    PREFIX_LEN_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: int
    prefix_len: int
    mask: int
    def __init__(self, name: _Optional[str] = ..., value: _Optional[int] = ..., prefix_len: _Optional[int] = ..., mask: _Optional[int] = ...) -> None: ...

class Rule(_message.Message):
    __slots__ = ("table", "match", "action", "params", "priority", "idle_timeout_ns")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TABLE_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_NS_FIELD_NUMBER: _ClassVar[int]
    table: str
    match: _containers.RepeatedCompositeFieldContainer[MatchField]
    action: str
    params: _containers.ScalarMap[str, int]
    priority: int
    idle_timeout_ns: int
    def __init__(self, table: _Optional[str] = ..., match: _Optional[_Iterable[_Union[MatchField, _Mapping]]] = ..., action: _Optional[str] = ..., params: _Optional[_Mapping[str, int]] = ..., priority: _Optional[int] = ..., idle_timeout_ns: _Optional[int] = ...) -> None: ...

class RuleReply(_message.Message):
    __slots__ = ("request_id", "status", "rules", "slot", "shard", "packed_rules")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    PACKED_RULES_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    status: Status
    rules: _containers.RepeatedCompositeFieldContainer[Rule]
    slot: int
    shard: str
    packed_rules: bytes
    def __init__(self, request_id: _Optional[int] = ..., status: _Optional[_Union[Status, _Mapping]] = ..., rules: _Optional[_Iterable[_Union[Rule, _Mapping]]] = ..., slot: _Optional[int] = ..., shard: _Optional[str] = ..., packed_rules: _Optional[bytes] = ...) -> None: ...

class RuleReplyBatch(_message.Message):
    __slots__ = ("replies",)
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[RuleReply]
    def __init__(self, replies: _Optional[_Iterable[_Union[RuleReply, _Mapping]]] = ...) -> None: ...

class ReleaseItem(_message.Message):
    __slots__ = ("flow", "slot")
    FLOW_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    flow: Flow
    slot: int
    def __init__(self, flow: _Optional[_Union[Flow, _Mapping]] = ..., slot: _Optional[int] = ...) -> None: ...

class ReleaseBatch(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ReleaseItem]
    def __init__(self, items: _Optional[_Iterable[_Union[ReleaseItem, _Mapping]]] = ...) -> None: ...

class ReleaseReply(_message.Message):
    __slots__ = ("status", "released_keys", "freed_connections", "unknown_keys", "forwarded")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RELEASED_KEYS_FIELD_NUMBER: _ClassVar[int]
    FREED_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_KEYS_FIELD_NUMBER: _ClassVar[int]
    FORWARDED_FIELD_NUMBER: _ClassVar[int]
    status: Status
    released_keys: int
    freed_connections: int
    unknown_keys: int
    forwarded: int
    def __init__(self, status: _Optional[_Union[Status, _Mapping]] = ..., released_keys: _Optional[int] = ..., freed_connections: _Optional[int] = ..., unknown_keys: _Optional[int] = ..., forwarded: _Optional[int] = ...) -> None: ...

class ScaleRequest(_message.Message):
    __slots__ = ("op_id", "kind", "shard", "target_scg")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OUT: _ClassVar[ScaleRequest.Kind]
        IN: _ClassVar[ScaleRequest.Kind]
    OUT: ScaleRequest.Kind
    IN: ScaleRequest.Kind
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    TARGET_SCG_FIELD_NUMBER: _ClassVar[int]
    op_id: str
    kind: ScaleRequest.Kind
    shard: str
    target_scg: str
    def __init__(self, op_id: _Optional[str] = ..., kind: _Optional[_Union[ScaleRequest.Kind, str]] = ..., shard: _Optional[str] = ..., target_scg: _Optional[str] = ...) -> None: ...

class ScaleStatusRequest(_message.Message):
    __slots__ = ("op_id", "wait_ms")
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    op_id: str
    wait_ms: int
    def __init__(self, op_id: _Optional[str] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class ScaleReply(_message.Message):
    __slots__ = ("op_id", "status", "phase", "shards", "moved_connections", "seconds", "phase_seconds")
    class PhaseSecondsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    MOVED_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    PHASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    op_id: str
    status: Status
    phase: str
    shards: _containers.RepeatedScalarFieldContainer[str]
    moved_connections: int
    seconds: float
    phase_seconds: _containers.ScalarMap[str, float]
    def __init__(self, op_id: _Optional[str] = ..., status: _Optional[_Union[Status, _Mapping]] = ..., phase: _Optional[str] = ..., shards: _Optional[_Iterable[str]] = ..., moved_connections: _Optional[int] = ..., seconds: _Optional[float] = ..., phase_seconds: _Optional[_Mapping[str, float]] = ...) -> None: ...

class InspectRequest(_message.Message):
    __slots__ = ("elements",)
    ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    elements: bool
    def __init__(self, elements: _Optional[bool] = ...) -> None: ...

class ShardInfo(_message.Message):
    __slots__ = ("id", "state", "connections", "free", "detail_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: str
    connections: int
    free: int
    detail_json: str
    def __init__(self, id: _Optional[str] = ..., state: _Optional[str] = ..., connections: _Optional[int] = ..., free: _Optional[int] = ..., detail_json: _Optional[str] = ...) -> None: ...

class InspectReply(_message.Message):
    __slots__ = ("node_id", "scg", "role", "epoch", "applied_seq", "committed_seq", "shards", "counters", "metrics_text")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SCG_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_SEQ_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    METRICS_TEXT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    scg: str
    role: str
    epoch: int
    applied_seq: int
    committed_seq: int
    shards: _containers.RepeatedCompositeFieldContainer[ShardInfo]
    counters: _containers.ScalarMap[str, int]
    metrics_text: str
    def __init__(self, node_id: _Optional[str] = ..., scg: _Optional[str] = ..., role: _Optional[str] = ..., epoch: _Optional[int] = ..., applied_seq: _Optional[int] = ..., committed_seq: _Optional[int] = ..., shards: _Optional[_Iterable[_Union[ShardInfo, _Mapping]]] = ..., counters: _Optional[_Mapping[str, int]] = ..., metrics_text: _Optional[str] = ...) -> None: ...

class ChainHello(_message.Message):
    __slots__ = ("epoch", "from_node")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    from_node: str
    def __init__(self, epoch: _Optional[int] = ..., from_node: _Optional[str] = ...) -> None: ...

class ChainUpdate(_message.Message):
    __slots__ = ("seq", "ops", "snapshot", "blobs", "digest", "answer", "answer_token")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    ANSWER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    seq: int
    ops: bytes
    snapshot: bool
    blobs: _containers.RepeatedScalarFieldContainer[bytes]
    digest: int
    answer: bytes
    answer_token: bytes
    def __init__(self, seq: _Optional[int] = ..., ops: _Optional[bytes] = ..., snapshot: _Optional[bool] = ..., blobs: _Optional[_Iterable[bytes]] = ..., digest: _Optional[int] = ..., answer: _Optional[bytes] = ..., answer_token: _Optional[bytes] = ...) -> None: ...

class ChainMessage(_message.Message):
    __slots__ = ("hello", "update")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    hello: ChainHello
    update: ChainUpdate
    def __init__(self, hello: _Optional[_Union[ChainHello, _Mapping]] = ..., update: _Optional[_Union[ChainUpdate, _Mapping]] = ...) -> None: ...

class ChainAck(_message.Message):
    __slots__ = ("acked_seq", "applied_seq", "fresh", "refused", "digest", "undelivered")
    ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    FRESH_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    UNDELIVERED_FIELD_NUMBER: _ClassVar[int]
    acked_seq: int
    applied_seq: int
    fresh: bool
    refused: str
    digest: int
    undelivered: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, acked_seq: _Optional[int] = ..., applied_seq: _Optional[int] = ..., fresh: _Optional[bool] = ..., refused: _Optional[str] = ..., digest: _Optional[int] = ..., undelivered: _Optional[_Iterable[int]] = ...) -> None: ...

class TransferRequest(_message.Message):
    __slots__ = ("op_id", "kind", "shard", "payload", "coalesce_with", "from_scg", "part")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        SEED: _ClassVar[TransferRequest.Kind]
        MERGE: _ClassVar[TransferRequest.Kind]
        PART: _ClassVar[TransferRequest.Kind]
    SEED: TransferRequest.Kind
    MERGE: TransferRequest.Kind
    PART: TransferRequest.Kind
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    COALESCE_WITH_FIELD_NUMBER: _ClassVar[int]
    FROM_SCG_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    op_id: str
    kind: TransferRequest.Kind
    shard: str
    payload: bytes
    coalesce_with: str
    from_scg: str
    part: int
    def __init__(self, op_id: _Optional[str] = ..., kind: _Optional[_Union[TransferRequest.Kind, str]] = ..., shard: _Optional[str] = ..., payload: _Optional[bytes] = ..., coalesce_with: _Optional[str] = ..., from_scg: _Optional[str] = ..., part: _Optional[int] = ...) -> None: ...

class TransferReply(_message.Message):
    __slots__ = ("status", "shard")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    status: Status
    shard: str
    def __init__(self, status: _Optional[_Union[Status, _Mapping]] = ..., shard: _Optional[str] = ...) -> None: ...

class ComputeCall(_message.Message):
    __slots__ = ("call_id", "hops", "batch", "release", "answer_token", "listen")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    ANSWER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LISTEN_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    hops: int
    batch: RuleBatch
    release: ReleaseBatch
    answer_token: bytes
    listen: bytes
    def __init__(self, call_id: _Optional[int] = ..., hops: _Optional[int] = ..., batch: _Optional[_Union[RuleBatch, _Mapping]] = ..., release: _Optional[_Union[ReleaseBatch, _Mapping]] = ..., answer_token: _Optional[bytes] = ..., listen: _Optional[bytes] = ...) -> None: ...

class ComputeAnswer(_message.Message):
    __slots__ = ("call_id", "batch", "error", "released")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    batch: RuleReplyBatch
    error: Status
    released: ReleaseReply
    def __init__(self, call_id: _Optional[int] = ..., batch: _Optional[_Union[RuleReplyBatch, _Mapping]] = ..., error: _Optional[_Union[Status, _Mapping]] = ..., released: _Optional[_Union[ReleaseReply, _Mapping]] = ...) -> None: ...
