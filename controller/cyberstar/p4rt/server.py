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

from cyberstar.p4rt import batching
from cyberstar.p4rt.arbitration import Arbitration, Controller
from cyberstar.p4rt.errors import P4RuntimeError
from cyberstar.pipeline.frames import Punted

log = logging.getLogger(__name__)
API_VERSION = "1.4.0"
READ_CHUNK = 1000
Action = p4r.SetForwardingPipelineConfigRequest
_END = object()
_EXTENSIONS = (batching.STREAM_BATCHING, batching.PACKET_OUT_BATCH)


class Device(Protocol):
    def verify_config(self, config: p4r.ForwardingPipelineConfig) -> None: ...
    def commit(self, reconcile: bool) -> None: ...
    def write(self, updates: list[p4r.Update]) -> list[P4RuntimeError | None]: ...
    def read(self, entity: p4r.Entity) -> Iterator[p4r.Entity]: ...
    def packet_outs(self, packets: list[p4r.PacketOut]) -> list[P4RuntimeError | None]: ...
    def packet_in(self, punted: Punted) -> bytes: ...


class PacketIns(list):
    """Serialized PacketIns queued for a stream as one item (a perf-buffer poll's worth)."""


class _Outbox(queue.Queue):
    """A stream's outgoing messages, bounded in packets: a PacketIns item weighs its length."""

    def _init(self, maxsize: int) -> None:
        super()._init(maxsize)
        self._weight = 0

    def _qsize(self) -> int:
        return self._weight

    def _put(self, item: object) -> None:
        self._weight += len(item) if isinstance(item, PacketIns) else 1
        super()._put(item)

    def _get(self) -> object:
        item = super()._get()
        self._weight -= len(item) if isinstance(item, PacketIns) else 1
        return item


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

    def publish(self, msg: p4r.StreamMessageResponse | PacketIns) -> bool:
        """Send the primary a stream message (an idle-timeout notification) or PacketIns;
        each stream sends those as batches or one by one, as its controller asked."""
        ok = self.arbitration.send_to_primary(msg)
        if isinstance(msg, PacketIns):
            self.stats["packet_in" if ok else "packet_in_dropped"] += len(msg)
        return ok

    @property
    def pipeline_set(self) -> bool:
        return self._config is not None

    # ---- RPCs ---------------------------------------------------------------------------------

    def Capabilities(self, request, context):
        return p4r.CapabilitiesResponse(
            p4runtime_api_version=API_VERSION, experimental=batching.capability()
        )

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
        outbox: queue.Queue = _Outbox(maxsize=65536)
        # the controller's arbitration state; how many PacketIns a message may carry (1 until
        # the controller asks for batches)
        state: dict = {"controller": None, "batch": 1}
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
        held = None  # an item taken while coalescing PacketIns, sent next
        try:
            while True:
                item, held = (held, None) if held is not None else (outbox.get(), None)
                if item is _END:
                    return
                if isinstance(item, P4RuntimeError):
                    context.abort(item.code, item.message)
                if not isinstance(item, PacketIns):
                    yield item
                    continue
                limit = state["batch"]
                if limit == 1:
                    yield from map(batching.packet_in_response, item)
                    continue
                # PacketIns queued behind this item go in the same messages
                packets = list(item)
                while len(packets) < limit:
                    try:
                        nxt = outbox.get_nowait()
                    except queue.Empty:
                        break
                    if not isinstance(nxt, PacketIns):
                        held = nxt
                        break
                    packets += nxt
                for i in range(0, len(packets), limit):
                    yield batching.packet_in_batch_response(packets[i : i + limit])
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
        if kind == "packet":
            self._packet_outs(controller, [req.packet], outbox)
        elif kind == "other" and req.other.type_url in _EXTENSIONS:
            try:  # cyberstar's stream batching (p4rt/batching.py)
                if req.other.type_url == batching.STREAM_BATCHING:
                    wanted = batching.requested_max_packets(req.other)
                    state["batch"] = max(1, min(wanted, batching.MAX_PACKETS))
                    return
                packets = batching.packet_outs_of(req.other)
            except ValueError as exc:
                outbox.put(_stream_error(grpc.StatusCode.INVALID_ARGUMENT, str(exc)))
                return
            self._packet_outs(controller, packets, outbox)
        else:
            what = f"other ({req.other.type_url})" if kind == "other" else kind
            outbox.put(_stream_error(grpc.StatusCode.UNIMPLEMENTED, f"{what} is not supported"))

    def _packet_outs(
        self, controller: Controller, packets: list[p4r.PacketOut], outbox: queue.Queue
    ) -> None:
        try:
            if not self.arbitration.is_primary(controller):
                raise P4RuntimeError(
                    grpc.StatusCode.PERMISSION_DENIED, "only the primary sends packets"
                )
            self._check_pipeline()
        except P4RuntimeError as err:
            for packet in packets:
                outbox.put(_stream_error(err.code, err.message, packet))
            return
        for packet, err in zip(packets, self.device.packet_outs(packets), strict=True):
            if err is not None:
                outbox.put(_stream_error(err.code, err.message, packet))


def _stream_error(
    code: grpc.StatusCode, message: str, packet: p4r.PacketOut | None = None
) -> p4r.StreamMessageResponse:
    err = p4r.StreamError(canonical_code=code.value[0], message=message, space="cyberstar")
    if packet is not None:
        err.packet_out.packet_out.CopyFrom(packet)
    return p4r.StreamMessageResponse(error=err)


def _serialize(msg: object) -> bytes:
    """Stream responses may be pre-serialized bytes (PacketIns, built on the punt path)."""
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


def serve(server_impl: P4RuntimeServer, address: str, workers: int = 8) -> grpc.Server:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers),
        options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ],
    )
    server.add_generic_rpc_handlers((_handlers(server_impl),))
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen on {address}")
    server.start()
    return server
