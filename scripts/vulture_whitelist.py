"""Names `vulture` (make lint) cannot see used: read by a framework, by name, or as data.

Each line "uses" a name; keep a comment saying who uses it. Anything else vulture reports is
dead code: delete it.
"""

# ruff: noqa: B018, F821
# Protobuf message fields set by assignment (serialised, never read back in Python).
_.arch
_.match_type
_.direct_table_id
_.alias
_.elapsed_ns
# ctypes structure fields of BPF_PROG_TEST_RUN's attr (read by the kernel).
_.ctx_in
_.ctx_size_in
# The CLI registry (cyberstar.cli.COMMANDS) names these Verbs by "module:attribute".
BUILD
DEMO
DOCTOR
RUN
SERVE
PLACE
CHECK
TRAIN
GENERATE
SIMULATE
# Called by the standard library: http.server handlers, asyncio protocols.
_.do_GET
_.log_message
_.connection_made
_.data_received
_.connection_lost
# queue.Queue's hook, overridden by p4rt/server.py's _Outbox (bounded in packets).
_._qsize
# Dataclass fields serialised with dataclasses.asdict (simulator results).
scale_downs
_.scale_downs
# The pipeline spec's vocabulary: documentation of each object, counter units by value.
doc
PACKETS
BYTES
# pytest: module marks, hooks and their arguments, fixtures used by name (bmv2_tools for the
# skip it makes), hypothesis state-machine invariants.
pytestmark
need_etcd
bmv2_tools
pytest_runtest_makereport
pytest_collection_modifyitems
call
_.each_element_once
