"""The IPVS netlink codec, on the host (pure): our bytes, read back by pyroute2's own parser and
by our decoder. No kernel needed; the VM tests check the same messages against a real kernel."""

from __future__ import annotations

import socket
from typing import Any

import pytest

pytest.importorskip("pyroute2", reason="pyroute2 is the 'kernel' extra: pip install -e '.[kernel]'")

from lvs_events.agent.dataplane import _netlink as nl
from lvs_events.domain.config import Family, Forwarding, Protocol
from lvs_events.domain.table import Dest, Service

FAMILY_ID = 0x1234


def parse(req: nl.Request) -> Any:
    msg = nl._ipvsmsg(req.encode(7, FAMILY_ID))
    msg.decode()
    return msg


def test_vm_codec_service_add_is_what_pyroute2_reads() -> None:
    svc = Service(Protocol.TCP, "203.0.113.10", 80, scheduler="sh", persistent=7200,
                  netmask="255.255.255.0", ops=True, schedflags=("sh-fallback", "sh-port"))  # fmt: skip
    msg = parse(nl.service_request("add", svc))
    assert msg["header"]["type"] == FAMILY_ID
    assert msg["header"]["sequence_number"] == 7
    assert msg["cmd"] == nl.IPVS_CMD_NEW_SERVICE
    s = msg.get_attr("IPVS_CMD_ATTR_SERVICE")
    assert s.get_attr("IPVS_SVC_ATTR_AF") == socket.AF_INET
    assert s.get_attr("IPVS_SVC_ATTR_PROTOCOL") == socket.IPPROTO_TCP
    assert s.get_attr("IPVS_SVC_ATTR_ADDR")[:4] == bytes([203, 0, 113, 10])
    assert s.get_attr("IPVS_SVC_ATTR_PORT") == 80
    assert s.get_attr("IPVS_SVC_ATTR_SCHED_NAME") == "sh"
    assert s.get_attr("IPVS_SVC_ATTR_TIMEOUT") == 7200
    flags = s.get_attr("IPVS_SVC_ATTR_FLAGS")
    assert flags["flags"] == 0x1 | 0x4 | 0x8 | 0x10
    assert flags["mask"] == 0xFFFFFFFF
    assert nl.decode_service(_body(msg, nl.CMD_ATTR_SERVICE)) == svc


def test_vm_codec_ipv6_fwmark_netmask_is_a_prefix_length() -> None:
    svc = Service(
        Protocol.FWM, None, 0, fwmark=7, family=Family.INET6, scheduler="wlc", persistent=60, netmask="64"
    )
    msg = parse(nl.service_request("set", svc))
    s = msg.get_attr("IPVS_CMD_ATTR_SERVICE")
    assert s.get_attr("IPVS_SVC_ATTR_FWMARK") == 7
    assert s.get_attr("IPVS_SVC_ATTR_NETMASK") == 64
    assert s.get_attr("IPVS_SVC_ATTR_PROTOCOL") is None
    assert nl.decode_service(_body(msg, nl.CMD_ATTR_SERVICE)) == svc


@pytest.mark.parametrize("fwd", list(Forwarding))
def test_vm_codec_dest_set_always_carries_every_attribute(fwd: Forwarding) -> None:
    svc = Service(Protocol.UDP, "2001:db8::53", 53, family=Family.INET6)
    d = Dest("2001:db8::22", 5353, fwd, 0, lower_threshold=3, upper_threshold=9)
    msg = parse(nl.dest_request("set", svc, d))
    assert msg["cmd"] == nl.IPVS_CMD_SET_DEST
    a = msg.get_attr("IPVS_CMD_ATTR_DEST")
    assert a.get_attr("IPVS_DEST_ATTR_FWD_METHOD") == nl.FWD_CODES[fwd]
    assert a.get_attr("IPVS_DEST_ATTR_WEIGHT") == 0
    assert a.get_attr("IPVS_DEST_ATTR_U_THRESH") == 9
    assert a.get_attr("IPVS_DEST_ATTR_L_THRESH") == 3
    assert a.get_attr("IPVS_DEST_ATTR_PORT") == 5353
    assert a.get_attr("IPVS_DEST_ATTR_ADDR_FAMILY") == socket.AF_INET6
    assert nl.decode_dest(_body(msg, nl.CMD_ATTR_DEST), socket.AF_INET6) == d


def test_vm_codec_deletes_name_only_the_key() -> None:
    svc = Service(Protocol.TCP, "203.0.113.10", 443)
    msg = parse(nl.service_request("del", svc))
    assert msg["cmd"] == nl.IPVS_CMD_DEL_SERVICE
    assert msg.get_attr("IPVS_CMD_ATTR_SERVICE").get_attr("IPVS_SVC_ATTR_SCHED_NAME") is None
    msg = parse(nl.dest_request("del", svc, Dest("192.0.2.1", 443)))
    assert msg["cmd"] == nl.IPVS_CMD_DEL_DEST
    assert msg.get_attr("IPVS_CMD_ATTR_DEST").get_attr("IPVS_DEST_ATTR_WEIGHT") is None


def test_vm_codec_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="family"):
        nl.service_request("add", Service(Protocol.TCP, "2001:db8::1", 80))
    with pytest.raises(ValueError, match="scheduler flag"):
        nl.service_request("add", Service(Protocol.TCP, "192.0.2.1", 80, schedflags=("bogus",)))


def _body(msg: Any, attr: int) -> bytes:
    data = bytes(msg.data)
    attrs = nl._attrs(data, 16 + 4)
    return attrs[attr]
