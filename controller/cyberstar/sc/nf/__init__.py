"""NF plug-ins. `api` is the contract; each other module is one NF with one job."""

from cyberstar.sc.nf.api import Drop, NetworkFunction, NfContext, PacketView
from cyberstar.sc.nf.dnat import Dnat
from cyberstar.sc.nf.firewall import Firewall
from cyberstar.sc.nf.lb import LoadBalancer
from cyberstar.sc.nf.snat import Snat

NF_KINDS: dict[str, type[NetworkFunction]] = {
    cls.kind: cls for cls in (Snat, Dnat, LoadBalancer, Firewall)
}

__all__ = ["NF_KINDS", "Drop", "NetworkFunction", "NfContext", "PacketView"]
