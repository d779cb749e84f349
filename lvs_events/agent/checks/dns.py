"""The ``dns`` negotiate check (ldirectord's ``check_dns`` with ``Net::DNS``).

The request (without its leading ``/``) is looked up at the real server: an ``A`` query for a
name, a ``PTR`` query for an IP address (``Net::DNS::Resolver->search`` does the same). Over UDP
for a UDP virtual service, TCP otherwise. Up when an ``A`` address or ``PTR`` name of the answer
matches ``receive``; an empty ``receive`` never matches, as in ldirectord. Messages are built and
parsed with dnspython.
"""

from __future__ import annotations

import ipaddress
import re
import struct

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.reversename

from lvs_events.agent.checks.base import Down, Result, close_writer, open_tcp
from lvs_events.agent.checks.spec import CheckSpec
from lvs_events.agent.checks.udp import datagram

__all__ = ["check_dns", "dns_query"]


def dns_query(request: str) -> dns.message.Message:
    name = request.lstrip("/")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return dns.message.make_query(name, dns.rdatatype.A)
    return dns.message.make_query(dns.reversename.from_address(name), dns.rdatatype.PTR)


async def _tcp(spec: CheckSpec, wire: bytes) -> bytes:
    reader, writer = await open_tcp(spec)
    try:
        writer.write(struct.pack("!H", len(wire)) + wire)
        await writer.drain()
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        return await reader.readexactly(length)
    finally:
        await close_writer(writer)


async def check_dns(spec: CheckSpec) -> Result:
    query = dns_query(spec.request)
    wire = query.to_wire()
    if spec.protocol.value == "udp":
        answer_wire, _ = await datagram(spec, wire)
    else:
        answer_wire = await _tcp(spec, wire)
    try:
        answer = dns.message.from_wire(answer_wire)
    except Exception as e:  # dnspython raises many types for malformed messages
        raise Down(f"malformed DNS answer: {type(e).__name__}") from e
    if answer.id != query.id or not answer.flags & dns.flags.QR:
        raise Down("DNS answer does not match the query")
    rcode = answer.rcode()
    if rcode != 0:
        raise Down(f"DNS rcode {dns.rcode.to_text(rcode)}")
    pattern = re.compile(spec.receive) if spec.receive else None
    found: list[str] = []
    for rrset in answer.answer:
        for rd in rrset:
            if rd.rdtype == dns.rdatatype.A:
                text = rd.address
            elif rd.rdtype == dns.rdatatype.PTR:
                text = rd.target.to_text(omit_final_dot=True)
            else:
                continue
            found.append(text)
            if pattern is not None and pattern.search(text):
                return Result(True, f"{spec.request.lstrip('/')} -> {text}")
    raise Down(f"response mismatch: {found[:5]} does not match {spec.receive!r}")
