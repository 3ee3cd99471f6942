"""The Service Computing (SC) plane: NF state, rule computation, SC groups, scaling (paper §4.1).

Module map (docs/sc.md has the prose):

* `flows`    — flow keys, slots and shard ids: how state is partitioned and routed.
* `pool`     — the commutative address:port set (SNAT pools) with split and merge.
* `nf/`      — the NF plug-in API and the built-in NFs (SNAT, DNAT, LB, firewall).
* `compose`  — runs a tenant's NF chain on a first packet and composes the PP rules.
* `state`    — shards, connections, the state operations every chain node applies.
* `engine`   — one node's NF state machine: compute, release, apply, split, merge.
* `replication` — chain replication (packet-pass-through) between the nodes of an SCG.
* `coord`    — etcd: key layout, membership leases, chain reconfiguration, shard map.
* `scale`    — the scale-out / scale-in protocol (start → seed → freeze → merge → fin).
* `server`   — the gRPC service of one SC node; `cli` — `cyberstar sc serve`.
* `client`, `routing` — what FM uses: the SC client and the flow → shard → SCG routing.
* `rules`    — rules on the wire and as pipeline `TableEntry`s; `metrics` — counters.
* `lab`      — a private etcd and SC processes on loopback (tests, benchmarks, trying it out).
"""

# Items per Compute or Release call FM's router sends (`routing`): an SC node refuses more than
# its `limits.max_batch` whole, so that limit may not be set below this (`config`); a PP's idle
# scan may report thousands of rules at once, and no batch's size is trusted to be small.
CALL_CHUNK = 256
