"""The SC client FM uses (and SC nodes use between groups): one gRPC channel to one node.

Asynchronous (grpc.aio), like the SC node itself. Values are host-order integers. The channel is
mutual TLS with the caller's certificate (`cyberstar.tls.TlsFiles`), or plaintext to a loopback
address when the caller passes None (its configuration said plaintext).

```python
client = ScClient("127.0.0.1:7101", TlsFiles(ca, cert, key))
replies = await client.compute([Request(1, Packet(7, 1, 0, FlowKey(6, src, dst, 40000, 80)))])
await client.release([ReleaseKey(7, FlowKey(...), slot=replies[0].slot)])
op = await client.scale_out("7:0-1024", "scg2")
reply = await client.scale_status(op, wait_s=10)   # phase "fin"
```
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from cyberstar.proto import sc_pb2, sc_pb2_grpc
from cyberstar.sc.flows import FlowKey, Packet
from cyberstar.tls import TlsFiles, aio_channel

HOPS_METADATA = "x-cyberstar-hops"
# Channel options of the ServiceComputing API's clients (the server's are in its config).
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 512 << 20),
]


@dataclass(frozen=True)
class Request:
    request_id: int
    packet: Packet
    shard: str = ""


@dataclass(frozen=True)
class ReleaseKey:
    tenant_id: int
    key: FlowKey
    slot: int | None = None


def flow_proto(tenant_id: int, key: FlowKey, ingress_port: int = 0, vni: int = 0) -> sc_pb2.Flow:
    return sc_pb2.Flow(
        tenant_id=tenant_id,
        ingress_port=ingress_port,
        vni=vni,
        src_addr=key.src_addr,
        dst_addr=key.dst_addr,
        protocol=key.protocol,
        src_port=key.src_port,
        dst_port=key.dst_port,
    )


def request_proto(r: Request) -> sc_pb2.RuleRequest:
    p = r.packet
    return sc_pb2.RuleRequest(
        request_id=r.request_id,
        flow=flow_proto(p.tenant_id, p.key, p.ingress_port, p.vni),
        shard=r.shard,
    )


def rule_batch(
    requests: Iterable[Request | sc_pb2.RuleRequest], packed_layout: int = 0
) -> sc_pb2.RuleBatch:
    """`packed_layout`: the digest of the packed rules the caller reads (`FlowLayout`), or 0
    for protobuf rules."""
    return sc_pb2.RuleBatch(
        requests=[r if isinstance(r, sc_pb2.RuleRequest) else request_proto(r) for r in requests],
        packed_layout=packed_layout,
    )


def release_batch(keys: Iterable[ReleaseKey | sc_pb2.ReleaseItem]) -> sc_pb2.ReleaseBatch:
    return sc_pb2.ReleaseBatch(
        items=[k if isinstance(k, sc_pb2.ReleaseItem) else release_proto(k) for k in keys]
    )


def release_proto(r: ReleaseKey) -> sc_pb2.ReleaseItem:
    item = sc_pb2.ReleaseItem(flow=flow_proto(r.tenant_id, r.key))
    if r.slot is not None:
        item.slot = r.slot
    return item


class ScClient:
    def __init__(self, address: str, tls: TlsFiles | None, timeout_s: float = 30.0) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._channel = aio_channel(address, tls, GRPC_OPTIONS, "SC node")
        self.stub = sc_pb2_grpc.ServiceComputingStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> ScClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def compute(
        self,
        requests: Iterable[Request | sc_pb2.RuleRequest],
        hops: int = 0,
        packed_layout: int = 0,
    ) -> list[sc_pb2.RuleReply]:
        """One reply per request, in order (`sc_pb2.RuleReply`: status, rules or packed rules,
        slot, shard)."""
        reply = await self.stub.Compute(
            rule_batch(requests, packed_layout),
            timeout=self.timeout_s,
            metadata=((HOPS_METADATA, str(hops)),),
        )
        return list(reply.replies)

    async def release(
        self, keys: Iterable[ReleaseKey | sc_pb2.ReleaseItem], hops: int = 0
    ) -> sc_pb2.ReleaseReply:
        return await self.stub.Release(
            release_batch(keys), timeout=self.timeout_s, metadata=((HOPS_METADATA, str(hops)),)
        )

    async def scale_out(self, shard: str, target_scg: str, op_id: str | None = None) -> str:
        return await self._scale(sc_pb2.ScaleRequest.OUT, shard, target_scg, op_id)

    async def scale_in(self, shard: str, target_scg: str, op_id: str | None = None) -> str:
        return await self._scale(sc_pb2.ScaleRequest.IN, shard, target_scg, op_id)

    async def _scale(self, kind: int, shard: str, target: str, op_id: str | None) -> str:
        op_id = op_id or uuid.uuid4().hex[:12]
        reply = await self.stub.Scale(
            sc_pb2.ScaleRequest(op_id=op_id, kind=kind, shard=shard, target_scg=target),
            timeout=self.timeout_s,
        )
        if reply.status.code != sc_pb2.OK:
            raise ScaleError(reply.status.message, reply.status.code)
        return op_id

    async def scale_status(self, op_id: str, wait_s: float = 0.0) -> sc_pb2.ScaleReply:
        return await self.stub.ScaleStatus(
            sc_pb2.ScaleStatusRequest(op_id=op_id, wait_ms=int(wait_s * 1000)),
            timeout=wait_s + self.timeout_s,
        )

    async def inspect(self, elements: bool = False) -> sc_pb2.InspectReply:
        return await self.stub.Inspect(
            sc_pb2.InspectRequest(elements=elements), timeout=self.timeout_s
        )


class ScaleError(RuntimeError):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code
