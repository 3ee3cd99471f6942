"""Counters of an SC node, exposed by the Inspect RPC as a map and as Prometheus text."""

from __future__ import annotations

from collections import Counter

# name → help text; every counter the node may increment is declared here.
COUNTERS = {
    "requests": "rule requests received (Compute items)",
    "link_calls": "Compute calls received on the compute link (the others came over gRPC)",
    "packed_replies": "replies whose rules went as packed records (the caller asked: FM does)",
    "rules_ok": "requests answered with rules and status OK",
    "connections_created": "connections stored (state replicated through the chain)",
    "cache_hits": "requests answered from a stored connection",
    "denied": "flows dropped by an NF verdict (firewall deny, unsolicited inbound, ...)",
    "pool_exhausted": "ALARM: flows dropped because a pool had no free element",
    "unknown_tenant": "requests for a tenant this node has no configuration for",
    "malformed": "requests with missing or out-of-range fields",
    "wrong_shard": "requests for slots this SCG does not own",
    "not_head": "requests sent to a node that is not the chain head",
    "unavailable": "requests whose state change could not be committed in time",
    "proxied": "requests and releases passed on to the SCG that owns the slot now",
    "releases": "release items received",
    "released_keys": "rule keys released",
    "freed_connections": "connections freed (every key released)",
    "unknown_release": "releases of keys without state (idempotent no-ops)",
    "replicated_updates": "chain updates applied from the predecessor",
    "answers_passed_on": "Compute answers the head put in the chain for the tail to send "
    "(packet-pass-through: the caller listens on the tail)",
    "answers_delivered": "passed-through answers this node sent as the tail",
    "answers_undelivered": "passed-through answers this node could not send as the tail (no "
    "connection for the token): the head sends them",
    "answers_sent_by_head": "passed-through answers the head sent itself: the tail may not have "
    "(a chain change, no listener) or the update was not committed in time",
    "snapshots_sent": "state snapshots sent to a successor joining the chain",
    "resyncs_incremental": "successors caught up with the updates they lacked (no snapshot)",
    "chain_refused": "chain-link connections refused (no or wrong hello, too many, too slow)",
    "refused_calls": "calls refused (gRPC or compute link): caller's role not allowed, a batch "
    "over the limit, a frame that is not a call, or too many connections",
    "lease_lost": "times this node's membership lease lapsed and it rejoined",
    "scale_ops": "scale operations started on this node",
    "scale_failed": "scale operations that failed",
}


class Counters:
    def __init__(self) -> None:
        self.values: Counter[str] = Counter({name: 0 for name in COUNTERS})

    def inc(self, name: str, n: int = 1) -> None:
        if name not in COUNTERS:
            raise KeyError(f"undeclared counter {name!r}")
        self.values[name] += n

    def __getitem__(self, name: str) -> int:
        return self.values[name]

    def text(self, labels: dict[str, str]) -> str:
        """Prometheus text exposition (version 0.0.4)."""
        lab = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        lines = []
        for name, help_text in COUNTERS.items():
            metric = f"cyberstar_sc_{name}_total"
            lines += [
                f"# HELP {metric} {help_text}",
                f"# TYPE {metric} counter",
                f"{metric}{{{lab}}} {self.values[name]}",
            ]
        return "\n".join(lines) + "\n"
