"""Client arbitration and controller replication (P4Runtime specification §5).

One `Arbitration` per device (the default role only). The controller with the highest
election id seen so far is the primary; a controller whose id reaches that highest id takes
over; when the primary's stream ends there is no primary until a controller sends an id at least
as high. Every change is announced to all controllers with the status the spec prescribes
(OK to the primary, ALREADY_EXISTS to backups when a primary exists, NOT_FOUND when none does).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from dataclasses import dataclass, field

import grpc
from finsy.proto import p4r, rpc_code, rpc_status

from cyberstar.p4rt.errors import P4RuntimeError


def election_int(eid: p4r.Uint128) -> int:
    return (eid.high << 64) | eid.low


def election_msg(value: int) -> p4r.Uint128:
    return p4r.Uint128(high=value >> 64, low=value & ((1 << 64) - 1))


@dataclass(eq=False)
class Controller:
    election_id: int
    outbox: queue.Queue = field(default_factory=lambda: queue.Queue(maxsize=65536))


class Arbitration:
    def __init__(self, device_id: int) -> None:
        self.device_id = device_id
        self._lock = threading.Lock()
        self._controllers: list[Controller] = []
        self._primary: Controller | None = None
        self._highest: int | None = None

    # ---- stream events ----------------------------------------------------------------------

    def update(
        self, controller: Controller | None, msg: p4r.MasterArbitrationUpdate, outbox: queue.Queue
    ) -> Controller:
        """Handle a MasterArbitrationUpdate on a stream (None: the stream's first one)."""
        if msg.device_id != self.device_id:
            code = (
                grpc.StatusCode.NOT_FOUND
                if controller is None
                else grpc.StatusCode.FAILED_PRECONDITION
            )
            raise P4RuntimeError(
                code, f"device id {msg.device_id}: this target is {self.device_id}"
            )
        if msg.role.name or msg.role.id:
            raise P4RuntimeError(
                grpc.StatusCode.INVALID_ARGUMENT, "only the default role is served"
            )
        if not msg.HasField("election_id"):
            raise P4RuntimeError(grpc.StatusCode.INVALID_ARGUMENT, "an election id is required")
        eid = election_int(msg.election_id)
        with self._lock:
            for other in self._controllers:
                if other is not controller and other.election_id == eid:
                    raise P4RuntimeError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"election id {eid} is already used by another controller",
                    )
            if controller is None:
                controller = Controller(eid, outbox)
                self._controllers.append(controller)
            was_primary = controller is self._primary
            controller.election_id = eid
            if self._highest is None or eid >= self._highest:
                self._highest = eid
                self._primary = controller
                self._announce(None)
            elif was_primary:
                self._primary = None
                self._announce(None)
            else:
                self._announce(controller)
        return controller

    def leave(self, controller: Controller) -> None:
        with self._lock:
            if controller in self._controllers:
                self._controllers.remove(controller)
            if controller is self._primary:
                self._primary = None
                self._announce(None)

    # ---- queries ------------------------------------------------------------------------------

    def check_writer(self, election_id: p4r.Uint128) -> None:
        """Writes and pipeline changes are the primary's alone (PERMISSION_DENIED otherwise)."""
        eid = election_int(election_id)
        with self._lock:
            if self._primary is None or self._primary.election_id != eid:
                raise P4RuntimeError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"election id {eid} is not the primary's"
                    + (f" ({self._primary.election_id})" if self._primary else " (no primary)"),
                )

    def send_to_primary(self, msg: p4r.StreamMessageResponse) -> bool:
        """Queue a message for the primary; False if there is none or it cannot keep up."""
        with self._lock:
            primary = self._primary
        if primary is None:
            return False
        try:
            primary.outbox.put_nowait(msg)
        except queue.Full:
            return False
        return True

    def is_primary(self, controller: Controller) -> bool:
        return controller is self._primary

    # ---- notifications ----------------------------------------------------------------------

    def _announce(self, only: Controller | None) -> None:
        for c in [only] if only else self._controllers:
            upd = p4r.MasterArbitrationUpdate(device_id=self.device_id)
            if self._highest is not None:
                upd.election_id.CopyFrom(election_msg(self._highest))
            if c is self._primary:
                upd.status.CopyFrom(rpc_status.Status(code=rpc_code.OK))
            elif self._primary is not None:
                upd.status.CopyFrom(
                    rpc_status.Status(code=rpc_code.ALREADY_EXISTS, message="a primary exists")
                )
            else:
                upd.status.CopyFrom(
                    rpc_status.Status(code=rpc_code.NOT_FOUND, message="no primary")
                )
            with contextlib.suppress(queue.Full):
                c.outbox.put_nowait(p4r.StreamMessageResponse(arbitration=upd))
