"""Client arbitration and controller replication, as P4Runtime specification §5 says.

One `Arbitration` per device (the default role only). Every stream that sent a successful
`MasterArbitrationUpdate` is a live controller, known by its election id and by the connection
it arrived on (its peer). The server remembers the highest election id it has ever seen
(`election_id_past`, reset only by restarting the server):

* an id at least that high makes its controller the primary; a lower one (or none: an unset id
  is below every id) makes it a backup;
* when the primary's stream ends there is no primary until a controller arbitrates with an id
  at least as high as `election_id_past` — the notification that announces it names that id,
  so a controller that should lead can take it;
* an id another live controller holds is refused with INVALID_ARGUMENT, and more than
  `max_controllers` streams with RESOURCE_EXHAUSTED;
* writes are the primary's alone: the election id of a Write must be the primary's and the
  Write must arrive on the primary's connection (a client that never arbitrated, or another
  connection reusing the primary's id, gets PERMISSION_DENIED).

Every change is announced with the status the spec prescribes (OK to the primary,
ALREADY_EXISTS to backups when a primary exists, NOT_FOUND when none does).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import grpc
from finsy.proto import p4r, rpc_code, rpc_status

from cyberstar.p4rt.errors import P4RuntimeError
from cyberstar.p4rt.outbox import Outbox

log = logging.getLogger(__name__)


def election_int(eid: p4r.Uint128) -> int:
    return (eid.high << 64) | eid.low


def election_msg(value: int) -> p4r.Uint128:
    return p4r.Uint128(high=value >> 64, low=value & ((1 << 64) - 1))


@dataclass(eq=False)
class Controller:
    election_id: int | None  # None: unset, below every id (never primary)
    outbox: Outbox
    peer: str  # the connection the stream arrived on (`Peer.of`)


class Arbitration:
    def __init__(self, device_id: int, max_controllers: int = 16) -> None:
        self.device_id = device_id
        self.max_controllers = max_controllers
        self._lock = threading.Lock()
        self._controllers: list[Controller] = []
        self._primary: Controller | None = None
        self._past: int | None = None  # election_id_past: the highest id ever seen

    # ---- stream events ----------------------------------------------------------------------

    def update(
        self,
        controller: Controller | None,
        msg: p4r.MasterArbitrationUpdate,
        outbox: Outbox,
        peer: str,
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
        if msg.role.name or msg.role.id or msg.role.HasField("config"):
            raise P4RuntimeError(
                grpc.StatusCode.INVALID_ARGUMENT, "only the default role is served"
            )
        eid = election_int(msg.election_id) if msg.HasField("election_id") else None
        with self._lock:
            if eid is not None:
                for other in self._controllers:
                    if other is not controller and other.election_id == eid:
                        raise P4RuntimeError(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"election id {eid} is already used by another controller",
                        )
            if controller is None:
                if len(self._controllers) >= self.max_controllers:
                    raise P4RuntimeError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"{self.max_controllers} controllers are connected already",
                    )
                controller = Controller(eid, outbox, peer)
                self._controllers.append(controller)
            was_primary = controller is self._primary
            controller.election_id = eid
            if eid is not None and (self._past is None or eid >= self._past):
                previous = self._primary
                self._past = eid
                self._primary = controller
                if previous is not controller:
                    log.info("controller %s (%s) is the primary", eid, peer)
                self._announce(None)
            elif was_primary:
                self._primary = None
                log.info("the primary stepped down to %s: no primary", eid)
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
                log.info(
                    "the primary's stream ended: no primary until an election id >= %s arbitrates",
                    self._past,
                )
                self._announce(None)

    # ---- queries ------------------------------------------------------------------------------

    def check_writer(self, election_id: p4r.Uint128 | None, peer: str) -> None:
        """Writes and pipeline changes are the primary's alone (PERMISSION_DENIED otherwise)."""
        eid = election_int(election_id) if election_id is not None else None
        with self._lock:
            primary = self._primary
        if primary is None:
            raise P4RuntimeError(
                grpc.StatusCode.PERMISSION_DENIED, f"election id {eid}: there is no primary"
            )
        if eid is None or primary.election_id != eid:
            raise P4RuntimeError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"election id {eid} is not the primary's ({primary.election_id})",
            )
        if primary.peer != peer:
            raise P4RuntimeError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"election id {eid} belongs to the primary's stream, not to this connection: "
                "write on the connection that arbitrated",
            )

    def send_to_primary(self, msg: object) -> bool:
        """Queue a message for the primary; False if there is none or it cannot keep up."""
        primary = self._primary
        return primary is not None and primary.outbox.put(msg)

    def is_primary(self, controller: Controller) -> bool:
        return controller is self._primary

    # ---- notifications ----------------------------------------------------------------------

    def _announce(self, only: Controller | None) -> None:
        for c in [only] if only else self._controllers:
            upd = p4r.MasterArbitrationUpdate(device_id=self.device_id)
            if self._past is not None:
                upd.election_id.CopyFrom(election_msg(self._past))
            if c is self._primary:
                upd.status.CopyFrom(rpc_status.Status(code=rpc_code.OK, message="primary"))
            elif self._primary is not None:
                upd.status.CopyFrom(
                    rpc_status.Status(code=rpc_code.ALREADY_EXISTS, message="a primary exists")
                )
            else:
                upd.status.CopyFrom(
                    rpc_status.Status(code=rpc_code.NOT_FOUND, message="no primary")
                )
            c.outbox.put_urgent(p4r.StreamMessageResponse(arbitration=upd))
