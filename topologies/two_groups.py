"""Two PP groups, three tenants: a topology composed in Python.

Tenants A and B share group g1 (two XDP nodes and a spare); tenant C has group g2 to itself,
two XDP nodes that scale out onto a bmv2 node. Run it by hand, with a Mininet CLI:
`sudo .venv/bin/python topologies/two_groups.py`; or from a scenario:
`topology: {file: ../two_groups.py}` (topologies/scenarios/two_groups.yaml).
"""

from cyberstar.lab.topo import LabNet, interactive


def build(net: LabNet) -> None:
    net.add_etcd()
    net.add_fm("fm1")
    net.add_fm("fm2")  # hot standby
    net.add_scg("scg1")  # three SC nodes, chain-replicated
    net.add_scg("scg2", running=False)  # booted by an sc_scale_out event
    web = [net.add_backend(f"web{i}") for i in (1, 2)]  # nginx
    g1 = net.add_pp_group("g1", nodes=2, spares=1)
    g2 = net.add_pp_group("g2", nodes=2, spares=1, spare_kind="bmv2")
    net.add_tenant("A", tenant_id=7, group=g1, backends=web, clients=2)
    net.add_tenant("B", tenant_id=8, group=g1, backends=web[:1])
    net.add_tenant("C", tenant_id=9, group=g2, backends=web[1:])


if __name__ == "__main__":
    interactive(build)
