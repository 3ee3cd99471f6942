"""Compose what a tenant's NF chain did to a first packet into one flow_table rule per direction.

The forward rule matches the packet as it arrived and carries every rewrite the chain made
(`forward`, `snat`, `dnat` or `nat`, by which of source and destination changed). The return
rule matches the reply to the rewritten packet and undoes the rewrites, toward the return next
hop. Parameters are in the order of the pipeline's action declarations.
"""

from __future__ import annotations

from cyberstar.sc.flows import PROTO_ICMP, FlowKey
from cyberstar.sc.nf.api import PacketView
from cyberstar.sc.state import FlowRule


def rewrite_rule(
    key: FlowKey,
    src: tuple[int, int] | None,
    dst: tuple[int, int] | None,
    nexthop: int,
) -> FlowRule:
    """The rule for `key` that rewrites the source and/or destination (None: unchanged)."""
    if src is not None and dst is not None:
        return FlowRule(key, "nat", (src[0], src[1], dst[0], dst[1], nexthop))
    if src is not None:
        return FlowRule(key, "snat", (src[0], src[1], nexthop))
    if dst is not None:
        return FlowRule(key, "dnat", (dst[0], dst[1], nexthop))
    return FlowRule(key, "forward", (nexthop,))


def compose(
    original: FlowKey, view: PacketView, forward_nexthop: int, return_nexthop: int
) -> tuple[FlowRule, FlowRule | None]:
    """Forward and return rules of a flow the chain let through (return is None when the reply
    would have the forward key itself, e.g. a flow between one endpoint and itself)."""
    before_src = (original.src_addr, original.src_port)
    before_dst = (original.dst_addr, original.dst_port)
    after_src = (view.src_addr, view.src_port)
    after_dst = (view.dst_addr, view.dst_port)
    src_changed = after_src != before_src
    # ICMP echo: both "ports" are the identifier, which only a source rewrite changes.
    dst_changed = (
        view.dst_addr != original.dst_addr
        if original.protocol == PROTO_ICMP
        else after_dst != before_dst
    )
    fwd_nh = forward_nexthop if view.forward_nexthop is None else view.forward_nexthop
    ret_nh = return_nexthop if view.return_nexthop is None else view.return_nexthop
    forward = rewrite_rule(
        original,
        after_src if src_changed else None,
        after_dst if dst_changed else None,
        fwd_nh,
    )
    reply = FlowKey(original.protocol, view.dst_addr, view.src_addr, view.dst_port, view.src_port)
    if reply == original:
        return forward, None
    reverse = rewrite_rule(
        reply,
        before_dst if dst_changed else None,
        before_src if src_changed else None,
        ret_nh,
    )
    return forward, reverse


def drop_rule(key: FlowKey) -> FlowRule:
    return FlowRule(key, "flow_drop", ())
