from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StreamBatching(_message.Message):
    __slots__ = ("max_packets", "stream_writes")
    MAX_PACKETS_FIELD_NUMBER: _ClassVar[int]
    STREAM_WRITES_FIELD_NUMBER: _ClassVar[int]
    max_packets: int
    stream_writes: bool
    def __init__(self, max_packets: _Optional[int] = ..., stream_writes: _Optional[bool] = ...) -> None: ...

class PacketInBatch(_message.Message):
    __slots__ = ("packets",)
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    packets: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, packets: _Optional[_Iterable[bytes]] = ...) -> None: ...

class PacketOutBatch(_message.Message):
    __slots__ = ("packets",)
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    packets: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, packets: _Optional[_Iterable[bytes]] = ...) -> None: ...

class StreamWrite(_message.Message):
    __slots__ = ("id", "write", "packets")
    ID_FIELD_NUMBER: _ClassVar[int]
    WRITE_FIELD_NUMBER: _ClassVar[int]
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    id: int
    write: bytes
    packets: _containers.RepeatedCompositeFieldContainer[DependentPacketOut]
    def __init__(self, id: _Optional[int] = ..., write: _Optional[bytes] = ..., packets: _Optional[_Iterable[_Union[DependentPacketOut, _Mapping]]] = ...) -> None: ...

class DependentPacketOut(_message.Message):
    __slots__ = ("packet_out", "first_update", "updates")
    PACKET_OUT_FIELD_NUMBER: _ClassVar[int]
    FIRST_UPDATE_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    packet_out: bytes
    first_update: int
    updates: int
    def __init__(self, packet_out: _Optional[bytes] = ..., first_update: _Optional[int] = ..., updates: _Optional[int] = ...) -> None: ...

class StreamWriteResult(_message.Message):
    __slots__ = ("id", "code", "message", "errors")
    ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    id: int
    code: int
    message: str
    errors: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, id: _Optional[int] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., errors: _Optional[_Iterable[bytes]] = ...) -> None: ...
