"""A P4Runtime server (grpcio) in front of a device.

The protocol lives here — device ids, arbitration, pipeline state, per-update errors in Write
status details, chunked Read responses, the stream — and the device (`cyberstar.pp.device`)
does the target work. Errors follow the P4Runtime specification's status codes.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Protocol

import grpc
from finsy.proto import p4r, p4r_grpc, rpc_code, rpc_status
from google.protobuf import any_pb2

from cyberstar.listen import GrpcLimits, bind, server_options
from cyberstar.p4rt.arbitration import Arbitration, Controller
from cyberstar.p4rt.errors import P4RuntimeError
from cyberstar.pipeline.frames import Punted
from cyberstar.tls import TlsFiles, grpc_peer

log = logging.getLogger(__name__)
API_VERSION = "1.4.0"
READ_CHUNK = 1000
CONTROLLER_ROLES = ("fm", "admin")  # certificate roles that may use the P4Runtime service
Action = p4r.SetForwardingPipelineConfigRequest
_END = object()


class Device(Protocol):
    def verify_config(self, config: p4r.ForwardingPipelineConfig) -> None: ...
    def commit(self, reconcile: bool) -> None: ...
    def write(self, updates: list[p4r.Update]) -> list[P4RuntimeError | None]: ...
    def read(self, entity: p4r.Entity) -> Iterator[p4r.Entity]: ...
    def packet_out(self, packet: p4r.PacketOut) -> None: ...
    def packet_in_message(self, punted: Punted) -> bytes: ...


def _abort(context: grpc.ServicerContext, err: P4RuntimeError) -> None:
    context.abort(err.code, err.message)


class P4RuntimeServer(p4r_grpc.P4RuntimeServicer):
    def __init__(self, device: Device, device_id: int) -> None:
        self.device = device
        self.device_id = device_id
        self.arbitration = Arbitration(device_id)
        self._config: p4r.ForwardingPipelineConfig | None = None  # committed
        self._saved: p4r.ForwardingPipelineConfig | None = None  # VERIFY_AND_SAVE
        self._write_lock = threading.Lock()
        self.stats = {"write_errors": 0, "packet_in": 0, "packet_in_dropped": 0}

    # ---- helpers ------------------------------------------------------------------------------

    def _check_device(self, device_id: int) -> None:
        if device_id != self.device_id:
            raise P4RuntimeError(
                grpc.StatusCode.NOT_FOUND, f"device id {device_id}: this target is {self.device_id}"
            )

    def _check_pipeline(self) -> None:
        if self._config is None:
            raise P4RuntimeError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "no forwarding pipeline: call SetForwardingPipelineConfig first",
            )

    def publish(self, msg: p4r.StreamMessageResponse | bytes) -> bool:
        """Send a stream message to the primary: an idle-timeout notification, or a PacketIn
        already serialized (bytes)."""
        ok = self.arbitration.send_to_primary(msg)
        if isinstance(msg, bytes):
            self.stats["packet_in" if ok else "packet_in_dropped"] += 1
        return ok

    @property
    def pipeline_set(self) -> bool:
        return self._config is not None

    # ---- RPCs ---------------------------------------------------------------------------------

    def Capabilities(self, request, context):
        return p4r.CapabilitiesResponse(p4runtime_api_version=API_VERSION)

    def SetForwardingPipelineConfig(self, request, context):
        try:
            self._check_device(request.device_id)
            self.arbitration.check_writer(request.election_id)
            action = request.action
            if action in (
                Action.VERIFY,
                Action.VERIFY_AND_SAVE,
                Action.VERIFY_AND_COMMIT,
                Action.RECONCILE_AND_COMMIT,
            ):
                if not request.HasField("config"):
                    raise P4RuntimeError(grpc.StatusCode.INVALID_ARGUMENT, "no config given")
                self.device.verify_config(request.config)
            if action == Action.VERIFY:
                pass
            elif action == Action.VERIFY_AND_SAVE:
                self._saved = request.config
            elif action == Action.COMMIT:
                if request.HasField("config"):
                    raise P4RuntimeError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "COMMIT takes no config (it commits the saved one)",
                    )
                if self._saved is None:
                    raise P4RuntimeError(grpc.StatusCode.NOT_FOUND, "no saved config to commit")
                self._commit(self._saved, reconcile=False)
                self._saved = None
            elif action in (Action.VERIFY_AND_COMMIT, Action.RECONCILE_AND_COMMIT):
                self._commit(request.config, reconcile=action == Action.RECONCILE_AND_COMMIT)
            else:
                raise P4RuntimeError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown action {action}")
        except P4RuntimeError as err:
            _abort(context, err)
        return p4r.SetForwardingPipelineConfigResponse()

    def _commit(self, config: p4r.ForwardingPipelineConfig, reconcile: bool) -> None:
        with self._write_lock:
            self.device.commit(reconcile=reconcile and self._config is not None)
            self._config = p4r.ForwardingPipelineConfig()
            self._config.CopyFrom(config)

    def GetForwardingPipelineConfig(self, request, context):
        try:
            self._check_device(request.device_id)
            self._check_pipeline()
        except P4RuntimeError as err:
            _abort(context, err)
        assert self._config is not None
        rt = p4r.GetForwardingPipelineConfigRequest
        out = p4r.ForwardingPipelineConfig(cookie=self._config.cookie)
        if request.response_type in (rt.ALL, rt.P4INFO_AND_COOKIE):
            out.p4info.CopyFrom(self._config.p4info)
        if request.response_type in (rt.ALL, rt.DEVICE_CONFIG_AND_COOKIE):
            out.p4_device_config = self._config.p4_device_config
        return p4r.GetForwardingPipelineConfigResponse(config=out)

    def Write(self, request, context):
        try:
            self._check_device(request.device_id)
            self.arbitration.check_writer(request.election_id)
            self._check_pipeline()
            if request.atomicity != p4r.WriteRequest.CONTINUE_ON_ERROR:
                raise P4RuntimeError(
                    grpc.StatusCode.UNIMPLEMENTED, "only CONTINUE_ON_ERROR batches are supported"
                )
        except P4RuntimeError as err:
            _abort(context, err)
        with self._write_lock:
            results = self.device.write(list(request.updates))
        failed = [r for r in results if r is not None]
        if not failed:
            return p4r.WriteResponse()
        self.stats["write_errors"] += len(failed)
        status = rpc_status.Status(
            code=rpc_code.UNKNOWN, message=f"{len(failed)} of {len(results)} updates failed"
        )
        for r in results:
            err = p4r.Error(canonical_code=rpc_code.OK)
            if r is not None:
                err = p4r.Error(
                    canonical_code=r.code.value[0], message=r.message, space="cyberstar"
                )
            detail = any_pb2.Any()
            detail.Pack(err)
            status.details.append(detail)
        context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
        context.set_code(grpc.StatusCode.UNKNOWN)
        context.set_details(status.message)
        return p4r.WriteResponse()

    def Read(self, request, context):
        try:
            self._check_device(request.device_id)
            self._check_pipeline()
            batch: list[p4r.Entity] = []
            for entity in request.entities:
                for e in self.device.read(entity):
                    batch.append(e)
                    if len(batch) >= READ_CHUNK:
                        yield p4r.ReadResponse(entities=batch)
                        batch = []
            if batch or not request.entities:
                yield p4r.ReadResponse(entities=batch)
        except P4RuntimeError as err:
            _abort(context, err)

    def StreamChannel(self, request_iterator, context):
        outbox: queue.Queue = queue.Queue(maxsize=65536)
        state: dict[str, Controller | None] = {"controller": None}
        context.add_callback(lambda: outbox.put(_END))

        def reader() -> None:
            try:
                for req in request_iterator:
                    self._on_stream_request(req, state, outbox)
            except P4RuntimeError as err:
                outbox.put(err)
            except grpc.RpcError:
                pass
            except Exception:  # a bug must end this stream, not the server
                log.exception("stream reader failed")
            outbox.put(_END)

        threading.Thread(target=reader, name="p4rt-stream-reader", daemon=True).start()
        try:
            while True:
                item = outbox.get()
                if item is _END:
                    return
                if isinstance(item, P4RuntimeError):
                    context.abort(item.code, item.message)
                yield item
        finally:
            if state["controller"] is not None:
                self.arbitration.leave(state["controller"])

    def _on_stream_request(
        self, req: p4r.StreamMessageRequest, state: dict, outbox: queue.Queue
    ) -> None:
        kind = req.WhichOneof("update")
        if kind == "arbitration":
            state["controller"] = self.arbitration.update(
                state["controller"], req.arbitration, outbox
            )
            return
        controller = state["controller"]
        if controller is None:
            raise P4RuntimeError(
                grpc.StatusCode.FAILED_PRECONDITION, "send a MasterArbitrationUpdate first"
            )
        if kind != "packet":
            outbox.put(_stream_error(grpc.StatusCode.UNIMPLEMENTED, f"{kind} is not supported"))
            return
        try:
            if not self.arbitration.is_primary(controller):
                raise P4RuntimeError(
                    grpc.StatusCode.PERMISSION_DENIED, "only the primary sends packets"
                )
            self._check_pipeline()
            self.device.packet_out(req.packet)
        except P4RuntimeError as err:
            outbox.put(_stream_error(err.code, err.message, req.packet))


def _stream_error(
    code: grpc.StatusCode, message: str, packet: p4r.PacketOut | None = None
) -> p4r.StreamMessageResponse:
    err = p4r.StreamError(canonical_code=code.value[0], message=message, space="cyberstar")
    if packet is not None:
        err.packet_out.packet_out.CopyFrom(packet)
    return p4r.StreamMessageResponse(error=err)


def _serialize(msg: object) -> bytes:
    """Stream responses may be pre-serialized bytes (PacketIns, built on the hot path)."""
    return msg if isinstance(msg, bytes) else msg.SerializeToString()


def _handlers(impl: P4RuntimeServer) -> grpc.GenericRpcHandler:
    """The P4Runtime service, as the generated code registers it, except that StreamChannel
    responses go through `_serialize`."""

    def unary(method, request_type, response_type):
        return grpc.unary_unary_rpc_method_handler(
            method, request_deserializer=request_type.FromString,
            response_serializer=response_type.SerializeToString,
        )  # fmt: skip

    return grpc.method_handlers_generic_handler(
        "p4.v1.P4Runtime",
        {
            "Write": unary(impl.Write, p4r.WriteRequest, p4r.WriteResponse),
            "Read": grpc.unary_stream_rpc_method_handler(
                impl.Read, request_deserializer=p4r.ReadRequest.FromString,
                response_serializer=p4r.ReadResponse.SerializeToString,
            ),
            "SetForwardingPipelineConfig": unary(
                impl.SetForwardingPipelineConfig, p4r.SetForwardingPipelineConfigRequest,
                p4r.SetForwardingPipelineConfigResponse,
            ),
            "GetForwardingPipelineConfig": unary(
                impl.GetForwardingPipelineConfig, p4r.GetForwardingPipelineConfigRequest,
                p4r.GetForwardingPipelineConfigResponse,
            ),
            "StreamChannel": grpc.stream_stream_rpc_method_handler(
                impl.StreamChannel, request_deserializer=p4r.StreamMessageRequest.FromString,
                response_serializer=_serialize,
            ),
            "Capabilities": unary(
                impl.Capabilities, p4r.CapabilitiesRequest, p4r.CapabilitiesResponse
            ),
        },
    )  # fmt: skip


class _RoleCheck(grpc.GenericRpcHandler):
    """Over mutual TLS, only controllers (certificate role `fm` or `admin`) reach the service."""

    def __init__(self, inner: grpc.GenericRpcHandler, roles: frozenset[str]) -> None:
        self.inner = inner
        self.roles = roles

    def service(self, handler_call_details):
        handler = self.inner.service(handler_call_details)
        if handler is None:
            return None
        kind = next(k for k in ("unary_unary", "unary_stream", "stream_stream")
                    if getattr(handler, k) is not None)  # fmt: skip
        behavior = getattr(handler, kind)
        roles = self.roles

        def checked(request, context):
            peer = grpc_peer(context)
            if peer is not None and peer.role not in roles:
                context.abort(grpc.StatusCode.PERMISSION_DENIED,
                              f"P4Runtime is not open to {peer.role}:{peer.name} (allowed roles: "
                              f"{', '.join(sorted(roles))})")  # fmt: skip
            return behavior(request, context)

        return handler._replace(**{kind: checked})


def serve(server_impl: P4RuntimeServer, address: str, tls: TlsFiles | None,
          workers: int = 8) -> grpc.Server:  # fmt: skip
    """Serve P4Runtime on `address`: mutual TLS with `tls` (clients need a certificate of role
    `fm` or `admin` from the same CA), or plaintext (None: loopback or a unix socket only).
    Raises OSError naming the address when it cannot listen (taken by another process:
    SO_REUSEPORT is off)."""
    limits = GrpcLimits(max_message_bytes=64 << 20)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers), options=server_options(limits)
    )
    server.add_generic_rpc_handlers(
        (_RoleCheck(_handlers(server_impl), frozenset(CONTROLLER_ROLES)),)
    )
    bind(server, address, tls, "P4Runtime")
    server.start()
    return server
