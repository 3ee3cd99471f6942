from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class StreamBatching(_message.Message):
    __slots__ = ("max_packets",)
    MAX_PACKETS_FIELD_NUMBER: _ClassVar[int]
    max_packets: int
    def __init__(self, max_packets: _Optional[int] = ...) -> None: ...

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
