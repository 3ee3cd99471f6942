"""One P4Runtime session per PP node: connect, arbitrate, program, reconnect.

A session keeps its PP node reachable for FM: it connects (retrying while the node is down),
arbitrates with the FM's current election id, and when FM leads makes sure the node runs the
pipeline and holds its static entries (a restarted node starts empty). PacketIns and idle-timeout
notifications are handed to FM's callbacks with the session they came from.

A leading FM that loses primary on a node (another controller arbitrated with a higher election
id: a rogue client, or an earlier leader that took a higher id) says so and takes the node back:
the arbitration notice names the highest id the node has seen, and the leader arbitrates with
it (no primary left) or one above it (another controller is primary), after a pause that grows
while it keeps losing, so that two controllers cannot flap the node faster than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from finsy.proto import p4r, rpc_code

from cyberstar.codegen.p4info import build_p4info, canonical_p4info
from cyberstar.fm.config import PpNodeConfig
from cyberstar.p4rt import batching
from cyberstar.p4rt.aio_client import AioP4RuntimeClient
from cyberstar.p4rt.arbitration import election_int
from cyberstar.p4rt.codec import update
from cyberstar.p4rt.errors import P4RuntimeError
from cyberstar.p4rt.messages import Action
from cyberstar.pipeline.entries import TableEntry
from cyberstar.pipeline.pp import PIPELINE
from cyberstar.tls import TlsFiles

log = logging.getLogger(__name__)
RETRY_S = 0.2
RETAKE_S = (1.0, 30.0)  # first and longest pause before taking a node back
# bmv2 builds its tables from the device config when the pipeline is set: seconds on a busy host.
PIPELINE_TIMEOUT_S = 60.0


class PpSession:
    def __init__(
        self,
        config: PpNodeConfig,
        index: int,
        extra_entries: list[TableEntry],
        on_packet_in: Callable[[PpSession, p4r.PacketIn], None],
        on_idle: Callable[[PpSession, p4r.IdleTimeoutNotification], None],
        on_reset: Callable[[PpSession], Awaitable[None]],
        tls: TlsFiles | None,
    ) -> None:
        self.config = config
        self.tls = tls
        self.index = index  # bit in the rule cache's installed masks
        self.entries = [*config.static_entries, *extra_entries]
        self.on_packet_in = on_packet_in
        self.on_idle = on_idle
        self.on_reset = on_reset
        self.client: AioP4RuntimeClient | None = None
        self.election_id = 0
        self.leading = False  # FM leads: this session must be primary
        self.primary = False
        self.connected = False  # the stream is up
        self.lost_primary = 0  # times another controller took the node while FM led
        self._retake_pause = RETAKE_S[0]
        self.ready = asyncio.Event()  # connected, and programmed if primary
        self.connections = 0  # how many times the stream was (re)established
        self.packet_ins = 0
        # batches of first packets' rules written: as StreamWrites, or Write calls + PacketOuts
        self.rule_writes = {"stream": 0, "rpc": 0}
        self._task: asyncio.Task | None = None
        self._down_logged = False

    @property
    def name(self) -> str:
        return self.config.id

    @property
    def down(self) -> bool:
        """Its last connection attempt failed (not merely: not connected yet)."""
        return self._down_logged and not self.connected

    def start(self, election_id: int) -> None:
        self.election_id = election_id
        self._task = asyncio.create_task(self._run(), name=f"pp-session-{self.name}")

    async def _run(self) -> None:
        while True:
            try:
                await self._connect_and_serve()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._down_logged:  # one line per outage, not one per retry
                    state = "disconnected" if self.connections else "not reachable yet"
                    log.info("%s (%s) %s: %s; retrying", self.name, self.config.address, state,
                             _reason(exc))  # fmt: skip
                    self._down_logged = True
            self.ready.clear()
            self.primary = self.connected = False
            if self.client is not None:
                with contextlib.suppress(Exception):
                    await self.client.close()
                self.client = None
            await asyncio.sleep(RETRY_S)

    async def _connect_and_serve(self) -> None:
        c = AioP4RuntimeClient(
            self.config.address, self.config.device_id, self.election_id, tls=self.tls
        )
        self.client = c
        await asyncio.wait_for(c.channel.channel_ready(), 5)
        answer = await c.open_stream()
        self.connections += 1
        self.connected = True
        self._down_logged = False
        log.info("%s (%s) connected (stream %d)", self.name, self.config.address,
                 self.connections)  # fmt: skip
        await self._settle(answer)
        pumps = [
            asyncio.create_task(self._pump(c.packet_ins, self.on_packet_in)),
            asyncio.create_task(self._pump(c.idle_notifications, self.on_idle)),
            asyncio.create_task(self._watch_arbitration(c)),
        ]
        try:
            await c.stream_closed.wait()
        finally:
            for t in pumps:
                t.cancel()
        raise ConnectionError("stream closed")

    @property
    def stream_dropped(self) -> int:
        """Stream messages the current connection dropped because FM did not take them."""
        return self.client.dropped if self.client is not None else 0

    async def _pump(self, q: asyncio.Queue, handler: Callable) -> None:
        while True:
            handler(self, await q.get())

    async def _watch_arbitration(self, c: AioP4RuntimeClient) -> None:
        while True:
            await self._settle(await c.arbitrations.get())

    async def _settle(self, answer: p4r.MasterArbitrationUpdate) -> None:
        was = self.primary
        self.primary = answer.status.code == rpc_code.OK
        # Also when it was primary already (as a standby, alone on the node) and is becoming
        # the leader: become_primary cleared `ready`, and only programming sets it again.
        if self.primary and (not was or not self.ready.is_set()):
            self._retake_pause = RETAKE_S[0]
            await self._program()
        if self.primary:
            self.ready.set()  # programmed now or before (primary already, with a new id)
            return
        self.ready.set()
        if not self.leading:
            return
        highest = election_int(answer.election_id) if answer.HasField("election_id") else 0
        if highest < self.election_id:
            return  # an answer to an earlier arbitration of ours: the next one will follow
        taken = answer.status.code == rpc_code.ALREADY_EXISTS
        self.lost_primary += was
        log.warning(
            "%s: %s: %s election id %d (ours %d); taking the node back in %.0f s",
            self.name,
            "lost primary" if was else "not primary",
            "another controller is primary with" if taken else "no primary, the node has seen",
            highest, self.election_id, self._retake_pause,
        )  # fmt: skip
        target = highest + 1 if taken else highest
        if target == self.election_id:
            return  # asked already
        await asyncio.sleep(self._retake_pause)
        self._retake_pause = min(RETAKE_S[1], self._retake_pause * 2)
        if self.leading and self.client is not None and not self.primary:
            log.info("%s: arbitrating with election id %d", self.name, target)
            self.election_id = target
            await self.client.arbitrate(target)

    async def become_primary(self, election_id: int) -> None:
        """Arbitrate with a (higher) election id; `ready` is set once the node is programmed."""
        self.leading = True
        self.election_id = max(election_id, self.election_id)
        self.ready.clear()
        if self.client is not None and not self.client.stream_closed.is_set():
            await self.client.arbitrate(self.election_id)

    async def _program(self) -> None:
        """Make sure the node runs our pipeline (keeping its entries if it already does) and
        holds the static entries."""
        assert self.client is not None
        ours = build_p4info(PIPELINE)
        current = await self.client.get_pipeline()
        if current is None or canonical_p4info(current.p4info) != canonical_p4info(ours):
            log.info("%s: setting the pipeline (the node starts empty)", self.name)
            await self.client.set_pipeline(
                ours, self.config.device_config, Action.VERIFY_AND_COMMIT, PIPELINE_TIMEOUT_S
            )
            await self.on_reset(self)
        await self.write_idempotent(self.entries)
        self.ready.set()
        log.info("%s: primary, programmed (%d static entries)", self.name, len(self.entries))

    async def write_idempotent(self, entries: list[TableEntry]) -> None:
        """Insert entries; ones that exist are modified to match (MODIFY for default actions)."""
        assert self.client is not None
        ups = [
            update(p4r.Update.MODIFY if e.is_default else p4r.Update.INSERT, PIPELINE, e)
            for e in entries
        ]
        try:
            await self.client.write(ups)
        except P4RuntimeError as err:
            again = [
                update(p4r.Update.MODIFY, PIPELINE, entries[i])
                for i, code, _ in err.errors
                if code == "ALREADY_EXISTS"
            ]
            if len(again) != len(err.errors):
                raise
            await self.client.write(again)

    def _primary_client(self) -> AioP4RuntimeClient:
        if self.client is None or not self.primary:
            raise P4RuntimeError(
                grpc.StatusCode.FAILED_PRECONDITION, f"{self.name}: not connected as primary"
            )
        return self.client

    async def write(self, updates: list[p4r.Update | bytes]) -> None:
        await self._primary_client().write(updates)

    @property
    def stream_writes(self) -> bool:
        """The node takes a Write and its PacketOuts as one stream message."""
        return self.client is not None and self.client.stream_writes

    async def stream_write(self, updates: list[p4r.Update | bytes],
                           packets: list[batching.DependentPacket]) -> None:  # fmt: skip
        """One Write and the PacketOuts that wait for it (`AioP4RuntimeClient.stream_write`)."""
        await self._primary_client().stream_write(updates, packets)

    async def packet_out(self, payload: bytes, metadata: list[tuple[int, bytes]],
                         on_sent: Callable[[], None] | None = None) -> None:  # fmt: skip
        if self.client is not None:
            await self.client.packet_out(payload, metadata, on_sent)

    async def flow_entries(
        self, with_counters: bool = False
    ) -> AsyncIterator[list[p4r.TableEntry]]:
        """The node's flow table (with its direct counters if asked), a Read response at a time
        (each within the client's per-response deadline, however large the table)."""
        if self.client is None:
            raise P4RuntimeError(grpc.StatusCode.UNAVAILABLE, f"{self.name}: not connected")
        req = p4r.TableEntry(table_id=PIPELINE.table("flow_table").id)
        if with_counters:
            req.counter_data.SetInParent()
        async for resp in self.client.read_stream([p4r.Entity(table_entry=req)]):
            yield [e.table_entry for e in resp.entities]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer within 5 s"
    details = getattr(exc, "details", None)
    text = str(details()) if callable(details) else str(exc)
    return text or type(exc).__name__
