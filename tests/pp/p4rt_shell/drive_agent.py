"""Run by p4runtime-shell's own venv (.venv-p4rt): drive a P4Runtime target through the shell's
Python API, as a user would, and print one JSON line per step for the test to check.

usage: drive_agent.py ADDR P4INFO DEVICE_CONFIG primary|backup
"""

import json
import sys

import p4runtime_sh.shell as sh
from p4runtime_sh.p4runtime import P4RuntimeWriteException

addr, p4info, device_config, role = sys.argv[1:5]


def emit(**kw):
    print(json.dumps(kw), flush=True)


def entries(table):
    return list(sh.TableEntry(table).read())


if role == "backup":
    sh.setup(device_id=1, grpc_addr=addr, election_id=(0, 1))
    te = sh.TableEntry("next_hop")(action="set_next_hop")
    te.match["nexthop_id"] = "9"
    te.action["port"] = "1"
    te.action["smac"] = "02:00:00:00:00:01"
    te.action["dmac"] = "02:00:00:00:00:02"
    try:
        te.insert()
        emit(step="backup-insert", ok=True)
    except P4RuntimeWriteException as e:
        emit(step="backup-insert", ok=False, error=str(e))
    except Exception as e:  # the shell raises its own base class for RPC errors
        emit(step="backup-insert", ok=False, error=str(e))
    emit(step="backup-read", count=len(entries("next_hop")))
    sh.teardown()
    sys.exit(0)

sh.setup(
    device_id=1, grpc_addr=addr, election_id=(0, 10), config=sh.FwdPipeConfig(p4info, device_config)
)


def main():
    te = sh.TableEntry("tenant_classify")(action="set_tenant")
    te.match["ingress_port"] = "1"
    te.match["vni"] = "0"
    te.match["dst_addr"] = "10.0.0.0/8"
    te.action["tenant_id"] = "7"
    te.insert()

    acl = sh.TableEntry("acl")(action="acl_deny")
    acl.match["dst_port"] = "23&&&0xffff"
    acl.priority = 10
    acl.insert()

    flow = sh.TableEntry("flow_table")(action="snat")
    flow.match["tenant_id"] = "7"
    flow.match["src_addr"] = "192.168.1.2"
    flow.match["dst_addr"] = "10.0.0.5"
    flow.match["protocol"] = "6"
    flow.match["src_port"] = "40001"
    flow.match["dst_port"] = "80"
    flow.action["src_addr"] = "203.0.113.9"
    flow.action["src_port"] = "50000"
    flow.action["nexthop_id"] = "2"
    flow.idle_timeout_ns = 10_000_000_000
    flow.insert()

    nh = sh.TableEntry("next_hop")(action="set_next_hop_vxlan")
    nh.match["nexthop_id"] = "2"
    for k, v in {
        "port": "2",
        "smac": "02:00:00:00:00:01",
        "dmac": "02:00:00:00:00:03",
        "src_addr": "198.51.100.1",
        "dst_addr": "198.51.100.2",
        "vni": "6000",
    }.items():
        nh.action[k] = v
    nh.insert()

    emit(
        step="inserted",
        counts={t: len(entries(t)) for t in ("tenant_classify", "acl", "flow_table", "next_hop")},
    )
    (read_flow,) = entries("flow_table")
    emit(step="read-flow", text=str(read_flow))

    flow.action["src_port"] = "50001"
    flow.modify()
    (read_flow,) = entries("flow_table")
    emit(step="modified", text=str(read_flow))

    dflt = sh.TableEntry("flow_table")(action="flow_drop")
    dflt.is_default = True
    dflt.modify()
    (default,) = sh.TableEntry("flow_table")(is_default=True).read()
    emit(step="default", text=str(default))

    try:
        flow.insert()
        emit(step="duplicate", ok=True)
    except Exception as e:
        emit(step="duplicate", ok=False, error=str(e))

    for e in (acl, flow, nh, te):
        e.delete()
    emit(
        step="deleted",
        counts={t: len(entries(t)) for t in ("tenant_classify", "acl", "flow_table", "next_hop")},
    )
    counter = list(sh.CounterEntry("verdicts").read())
    emit(step="counters", cells=len(counter))

    meter = sh.MeterEntry("tenant_rate")
    meter.index = 7
    meter.cir, meter.cburst, meter.pir, meter.pburst = 250000, 2048, 250000, 2048
    meter.modify()
    cell = sh.MeterEntry("tenant_rate")
    cell.index = 7
    emit(step="meter", text=" ".join(str(c._entry) for c in cell.read()))


try:
    main()
finally:
    sh.teardown()
