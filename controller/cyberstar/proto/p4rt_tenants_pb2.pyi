from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class TenantCredit(_message.Message):
    __slots__ = ("tenant", "state", "credit", "base", "burst", "rate", "arrival", "delivered", "credit_cap", "unlimited", "debt_limit")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    BURST_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    ARRIVAL_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    CREDIT_CAP_FIELD_NUMBER: _ClassVar[int]
    UNLIMITED_FIELD_NUMBER: _ClassVar[int]
    DEBT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    tenant: int
    state: str
    credit: float
    base: float
    burst: float
    rate: float
    arrival: float
    delivered: float
    credit_cap: float
    unlimited: bool
    debt_limit: float
    def __init__(self, tenant: _Optional[int] = ..., state: _Optional[str] = ..., credit: _Optional[float] = ..., base: _Optional[float] = ..., burst: _Optional[float] = ..., rate: _Optional[float] = ..., arrival: _Optional[float] = ..., delivered: _Optional[float] = ..., credit_cap: _Optional[float] = ..., unlimited: _Optional[bool] = ..., debt_limit: _Optional[float] = ...) -> None: ...
