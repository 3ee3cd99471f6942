"""The reference model of the PP pipeline: frame + ingress port + rules → verdict and bytes.

It interprets the spec's tables and action primitives directly. The generated P4 and XDP C
implement the same control flow; see `docs/architecture.md` for the contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cyberstar.pipeline.checksum import replace16, replace32
from cyberstar.pipeline.entries import TableEntry
from cyberstar.pipeline.frames import (
    ICMP_ECHO_TYPES,
    Malformed,
    Parsed,
    effective_prefix,
    lookup_metadata,
    parse,
)
from cyberstar.pipeline.headers import ipv4_header, pack
from cyberstar.pipeline.meters import RED, MeterCell, MeterConfig
from cyberstar.pipeline.model import (
    REWRITE_TARGETS,
    Drop,
    Forward,
    ForwardVxlan,
    IndexedMeter,
    MeterUnit,
    Pass,
    Pipeline,
    Punt,
    Rewrite,
    SetMeta,
    SetNextHop,
)
from cyberstar.pipeline.pp import CONSTANTS, ETHERNET, OUTER_HEADERS, PIPELINE, UDP, VXLAN
from cyberstar.ref.tables import RefTable


@dataclass
class Result:
    verdict: str
    port: int | None = None
    output: bytes | None = None  # bytes that leave (forward) or reach the controller (punt)
    drop_reason: str | None = None
    punt_reason: str | None = None
    tenant_id: int = 0


@dataclass
class _State:
    meta: dict[str, int]
    verdict: str | None = None
    drop_reason: str | None = None
    punt_reason: str | None = None
    rewrites: dict[str, int] = field(default_factory=dict)
    has_next_hop: bool = False
    forward: Forward | ForwardVxlan | None = None
    forward_args: dict[str, int] = field(default_factory=dict)


class RefModel:
    """One PP node's tables and counters, and the packet interpreter."""

    def __init__(self, pipeline: Pipeline = PIPELINE) -> None:
        self.pipeline = pipeline
        self.tables = {t.name: RefTable(t) for t in pipeline.tables}
        self.counters = {c.name: [[0, 0] for _ in range(c.size)] for c in pipeline.counters}
        self.meters: dict[str, dict[int, MeterCell]] = {m.name: {} for m in pipeline.meters}

    def install(self, entries: list[TableEntry]) -> None:
        for e in entries:
            self.tables[e.table].install(e)

    def set_meter(self, name: str, index: int, config: MeterConfig | None) -> None:
        """Configure a meter cell, keeping its state (None: back to never configured, which
        marks green)."""
        self.meters[name].setdefault(index, MeterCell()).config = config

    def process(self, frame: bytes, ingress_port: int, now_ns: int = 0) -> Result:
        """`now_ns`: the packet's arrival time, which only meters read."""
        result = self._process(frame, ingress_port, now_ns)
        self._count("verdicts", self.pipeline.verdict(result.verdict), len(frame))
        if result.verdict == "drop":
            self._count("drop_reasons", self.pipeline.drop_reason(result.drop_reason), len(frame))
        elif result.verdict == "forward":
            self._count("port_tx", result.port, len(frame))
        return result

    def _count(self, counter: str, index: int, nbytes: int) -> None:
        cell = self.counters[counter][index]
        cell[0] += 1
        cell[1] += nbytes

    def _process(self, frame: bytes, ingress_port: int, now_ns: int) -> Result:
        try:
            p = parse(frame)
        except Malformed as exc:
            return Result("drop", drop_reason=exc.reason)
        prefix = effective_prefix(p)
        if prefix is None:
            return Result("pass")
        st = _State(meta=lookup_metadata(p, prefix, ingress_port))
        self._apply("tenant_classify", st, len(frame))
        for m in self.pipeline.meters:
            if st.verdict is None:
                self._meter(m, st, len(frame), now_ns)
        if st.verdict is None:
            self._apply("acl", st, len(frame))
        if st.verdict is None:
            self._apply("flow_table", st, len(frame))
        if st.verdict is None and st.has_next_hop:
            self._apply("next_hop", st, len(frame))
        tenant = st.meta["tenant_id"]
        if st.verdict == "drop":
            return Result("drop", drop_reason=st.drop_reason, tenant_id=tenant)
        if st.verdict in ("punt", "pass"):
            return Result(st.verdict, output=frame, punt_reason=st.punt_reason, tenant_id=tenant)
        if st.forward is None:
            # An ACL permit with no flow action cannot forward: the flow table always decides.
            raise AssertionError("pipeline ended without a verdict")
        out = _rewrite(p, frame, prefix, st)
        return Result("forward", port=st.forward_args["port"], output=out, tenant_id=tenant)

    def _meter(self, m: IndexedMeter, st: _State, frame_len: int, now_ns: int) -> None:
        index = st.meta[m.index]
        self._count(m.arrivals, index, frame_len)
        cell = self.meters[m.name].setdefault(index, MeterCell())
        units = 1 if m.unit is MeterUnit.PACKETS else frame_len
        if cell.color(now_ns, units) == RED:
            self._count(m.drops, index, frame_len)
            st.verdict, st.drop_reason = "drop", m.drop_reason

    def _apply(self, table: str, st: _State, frame_len: int) -> None:
        hit = self.tables[table].lookup(st.meta, frame_len)
        action = self.pipeline.action(hit.action)
        args = hit.params

        def arg(v: str | int) -> int:
            return v if isinstance(v, int) else args[v]

        for prim in action.body:
            match prim:
                case SetMeta(field=f, value=v):
                    st.meta[f] = arg(v)
                case Rewrite(target=target, param=param):
                    st.rewrites[target] = args[param]
                case SetNextHop(param=param):
                    st.meta["nexthop_id"] = args[param]
                    st.has_next_hop = True
                case Forward() | ForwardVxlan():
                    st.forward = prim
                    st.verdict = "forward"
                    st.forward_args = {
                        name: args[getattr(prim, name)] for name in prim.__dataclass_fields__
                    }
                case Drop(reason=reason):
                    st.verdict, st.drop_reason = "drop", reason
                case Punt(reason=reason):
                    st.verdict, st.punt_reason = "punt", reason
                case Pass():
                    st.verdict = "pass"


def _rewrite(p: Parsed, frame: bytes, prefix: str, st: _State) -> bytes:
    hdrs = {name: dict(values) for name, values in p.headers.items()}
    _apply_l3_l4_rewrites(hdrs, prefix, st.rewrites)
    args = st.forward_args
    if isinstance(st.forward, ForwardVxlan):
        if not p.has("vxlan") and "vlan" in hdrs:
            hdrs["ethernet"]["ether_type"] = hdrs.pop("vlan")["ether_type"]
        _drop_outer(hdrs, p)
        kept = _serialize(hdrs, p) + frame[p.payload_offset :]
        encap = _encap_headers(args, st.meta, len(kept))
        return encap + kept
    eth = "inner_ethernet" if p.has("vxlan") else "ethernet"
    hdrs[eth]["src_addr"] = args["smac"]
    hdrs[eth]["dst_addr"] = args["dmac"]
    _drop_outer(hdrs, p)
    return _serialize(hdrs, p) + frame[p.payload_offset :]


def _drop_outer(hdrs: dict[str, dict[str, int]], p: Parsed) -> None:
    """Decapsulate: everything in front of the inner Ethernet header goes."""
    if p.has("vxlan"):
        for name in OUTER_HEADERS:
            hdrs.pop(name, None)


def _serialize(hdrs: dict[str, dict[str, int]], p: Parsed) -> bytes:
    out = bytearray()
    for inst in PIPELINE.headers:
        if inst.type.varbit is not None:
            opt_header = inst.name
            base = opt_header.removesuffix("_options")
            if base in hdrs and opt_header in p.options:
                out += p.options[opt_header]
        elif inst.name in hdrs:
            out += pack(inst.type, hdrs[inst.name])
    return bytes(out)


def _apply_l3_l4_rewrites(hdrs: dict[str, dict[str, int]], prefix: str, rw: dict[str, int]) -> None:
    ip = hdrs[f"{prefix}ipv4"]
    tcp, udp, icmp = (hdrs.get(f"{prefix}{n}") for n in ("tcp", "udp", "icmp"))
    for target in REWRITE_TARGETS:
        if target not in rw:
            continue
        new = rw[target]
        if target in ("l3_src", "l3_dst"):
            fname = "src_addr" if target == "l3_src" else "dst_addr"
            old = ip[fname]
            ip["hdr_checksum"] = replace32(ip["hdr_checksum"], old, new)
            if tcp is not None:
                tcp["checksum"] = replace32(tcp["checksum"], old, new)
            if udp is not None and udp["checksum"]:
                udp["checksum"] = replace32(udp["checksum"], old, new) or 0xFFFF
            ip[fname] = new
        else:
            fname = "src_port" if target == "l4_src" else "dst_port"
            if tcp is not None:
                tcp["checksum"] = replace16(tcp["checksum"], tcp[fname], new)
                tcp[fname] = new
            elif udp is not None:
                if udp["checksum"]:
                    udp["checksum"] = replace16(udp["checksum"], udp[fname], new) or 0xFFFF
                udp[fname] = new
            elif icmp is not None and icmp["type"] in ICMP_ECHO_TYPES:
                icmp["checksum"] = replace16(icmp["checksum"], icmp["identifier"], new)
                icmp["identifier"] = new


def vxlan_source_port(meta: dict[str, int]) -> int:
    """UDP source port of the VXLAN envelope: a hash of the flow, for ECMP entropy (RFC 7348)."""
    h = meta["l3_src"] ^ meta["l3_dst"]
    h16 = (h >> 16) ^ (h & 0xFFFF) ^ meta["l4_src"] ^ meta["l4_dst"] ^ meta["l3_proto"]
    return 0xC000 | (h16 & 0x3FFF)


def _encap_headers(args: dict[str, int], meta: dict[str, int], inner_len: int) -> bytes:
    udp_len = UDP.byte_len + VXLAN.byte_len + inner_len
    ip = ipv4_header(
        args["src_addr"], args["dst_addr"], CONSTANTS["IP_PROTO_UDP"], udp_len,
        ttl=CONSTANTS["ENCAP_TTL"],
    )  # fmt: skip
    eth = {
        "dst_addr": args["dmac"],
        "src_addr": args["smac"],
        "ether_type": CONSTANTS["ETHERTYPE_IPV4"],
    }
    udp = {
        "src_port": vxlan_source_port(meta),
        "dst_port": CONSTANTS["VXLAN_UDP_PORT"],
        "length": udp_len,
        "checksum": 0,
    }
    vxlan = {"flags": 0x08, "reserved": 0, "vni": args["vni"], "reserved2": 0}
    return pack(ETHERNET, eth) + ip + pack(UDP, udp) + pack(VXLAN, vxlan)
