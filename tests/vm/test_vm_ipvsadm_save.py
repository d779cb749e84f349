"""``format_ipvsadm_save`` on the host (pure). The VM suite checks ``ipvsadm -R`` / ``-S -n``."""

from __future__ import annotations

from lvs_events.domain.config import Family, Forwarding, Protocol
from lvs_events.domain.ipvsadm_save import format_ipvsadm_save, normalized_schedflags, sorted_like_ipvsadm
from lvs_events.domain.table import Dest, Service, Table

G, M, IPIP = Forwarding.GATE, Forwarding.MASQ, Forwarding.IPIP


def test_vm_save_seed_like_service() -> None:
    t = Table((Service(Protocol.TCP, "203.0.113.10", 80, scheduler="wrr", persistent=7200,
                       dests=(Dest("192.0.2.12", 80, G, 20), Dest("192.0.2.11", 80, G, 10))),))  # fmt: skip
    assert format_ipvsadm_save(t) == (
        "-A -t 203.0.113.10:80 -s wrr -p 7200\n"
        "-a -t 203.0.113.10:80 -r 192.0.2.11:80 -g -w 10\n"
        "-a -t 203.0.113.10:80 -r 192.0.2.12:80 -g -w 20\n"
    )


def test_vm_save_every_option_in_ipvsadm_order() -> None:
    t = Table((
        Service(Protocol.FWM, None, 0, fwmark=7, family=Family.INET6, scheduler="wlc", persistent=60,
                netmask="64",
                dests=(Dest("2001:db8::5", 0, IPIP, 1, lower_threshold=10, upper_threshold=100),)),
        Service(Protocol.UDP, "203.0.113.53", 53, scheduler="sh", ops=True, schedflags=("flag-2", "flag-1"),
                dests=(Dest("192.0.2.21", 53, M, 0),)),
        Service(Protocol.TCP, "2001:db8::1", 443, family=Family.INET6, scheduler="sed", persistent=300,
                netmask="128"),
        Service(Protocol.TCP, "203.0.113.10", 443, scheduler="rr", persistent=30, netmask="255.255.255.0"),
        Service(Protocol.FWM, None, 0, fwmark=5, scheduler="rr", schedflags=("flag-3",)),
    ))  # fmt: skip
    assert format_ipvsadm_save(t).splitlines() == [
        "-A -t 203.0.113.10:443 -s rr -p 30 -M 255.255.255.0",
        "-A -u 203.0.113.53:53 -s sh -o -b sh-fallback,sh-port",
        "-a -u 203.0.113.53:53 -r 192.0.2.21:53 -m -w 0",
        "-A -t [2001:db8::1]:443 -s sed -p 300",
        "-A -f 5 -s rr -b flag-3",
        "-A -f 7 -6 -s wlc -p 60 -M 64",
        "-a -f 7 -6 -r [2001:db8::5]:0 -i -w 1 --tun-type ipip -x 100 -y 10",
    ]


def test_vm_save_orders_addresses_like_ipvsadm_c_int_difference() -> None:
    # Seen from ipvsadm 1.31 in the VM: 200.0.0.1 < 203.0.113.10 < 1.0.0.1 < 10.0.0.1 (32-bit wrap).
    addresses = ("10.0.0.1", "1.0.0.1", "203.0.113.10", "200.0.0.1")
    keys = [s.key for s in sorted_like_ipvsadm(Service(Protocol.TCP, a, 80) for a in addresses)]
    assert keys == ["TCP 200.0.0.1:80", "TCP 203.0.113.10:80", "TCP 1.0.0.1:80", "TCP 10.0.0.1:80"]


def test_vm_save_empty_table_is_empty() -> None:
    assert format_ipvsadm_save(Table()) == ""


def test_vm_schedflags_names_follow_the_scheduler() -> None:
    assert normalized_schedflags("mh", ("flag-1", "flag-2")) == ("mh-fallback", "mh-port")
    assert normalized_schedflags("wrr", ("sh-port",)) == ("flag-2",)
