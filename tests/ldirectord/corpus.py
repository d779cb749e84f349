"""Locating the shared ldirectord corpus, and comparing our parse with upstream's JSON."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lvs_events.domain.config import Config, RealServer, VirtualService
from lvs_events.ldirectord import StaticResolver


def shared_dir() -> Path:
    env = os.environ.get("LVS_SHARED_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared"


def corpus_dir() -> Path:
    return shared_dir() / "corpus" / "ldirectord"


def require_corpus() -> Path:
    d = corpus_dir()
    if not (d / "SOURCES.tsv").is_file():
        pytest.skip(f"shared ldirectord corpus not found at {d} (set LVS_SHARED_DIR)")
    return d


@dataclass(frozen=True)
class Entry:
    file: str
    verdict: str  # "ACCEPT" or "REJECT"
    line: int | None
    message: str | None
    virtuals: int | None
    reals: int | None


def entries() -> list[Entry]:
    d = corpus_dir()
    if not (d / "SOURCES.tsv").is_file():
        return []
    out = []
    with (d / "SOURCES.tsv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            verdict = row["upstream_verdict"]
            if verdict.startswith("ACCEPT"):
                inner = verdict[verdict.index("(") + 1 : verdict.index(")")]
                nv, nr = (int(part.split()[0]) for part in inner.split(","))
                out.append(Entry(row["file"], "ACCEPT", None, None, nv, nr))
            else:
                head, _, message = verdict.partition(": ")
                out.append(Entry(row["file"], "REJECT", int(head.rsplit(" ", 1)[1]), message, None, None))
    return out


def upstream_parse(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((corpus_dir() / "upstream-parse" / f"{name}.json").read_text())
    return data


def resolver_for(parsed: dict[str, Any]) -> StaticResolver:
    """A static resolver: numeric addresses, the usual services, and any name upstream resolved."""
    hosts: dict[str, str] = {}
    for miss in parsed.get("dns_misses", []):
        if isinstance(miss, dict) and "name" in miss and miss.get("address"):
            hosts[miss["name"]] = miss["address"]
    return StaticResolver(hosts=hosts)


def _strip(server: str) -> str:
    return server[1:-1] if server.startswith("[") else server


def _opt_int(value: Any, unset: Any = -1) -> int | None:
    return None if value is None or value == unset else int(value)


def _real_view(r: dict[str, Any]) -> tuple[object, ...]:
    return (
        _strip(r["server"]),
        int(r["port"]),
        r["forward"],
        int(r["weight"]),
        int(r.get("l-threshold", 0)),
        int(r.get("u-threshold", 0)),
        r.get("request"),
        r.get("receive"),
    )


def _our_real(r: RealServer) -> tuple[object, ...]:
    return (
        r.address,
        r.port,
        r.forwarding.value,
        r.weight,
        r.lower_threshold,
        r.upper_threshold,
        r.request,
        r.receive,
    )


def upstream_virtual_view(v: dict[str, Any]) -> dict[str, object]:
    fb = v.get("fallback")
    checktype = v["checktype"]
    if checktype == "combined":
        checktype = str(int(v["num_connects"]))
    passwd = v.get("passwd") or None
    if passwd is not None and passwd.startswith("ldirectord@"):
        passwd = None  # host-dependent default, applied by the checker
    return {
        "protocol": v["protocol"],
        "address": None if v["protocol"] == "fwm" else _strip(v["server"]),
        "port": 0 if v["protocol"] == "fwm" else int(v["port"]),
        "fwmark": int(v["fwm"]) if v["protocol"] == "fwm" else None,
        "family": int(v["addressfamily"]),
        "scheduler": v["scheduler"],
        "persistent": _opt_int(v.get("persistent"), None),
        "netmask": v.get("netmask"),
        "ops": v.get("ops") == "yes",
        "reals": [_real_view(r) for r in v["real"]],
        "fallback": None if not fb else (_strip(fb["server"]), int(fb["port"] or 0), fb["forward"]),
        "checktype": checktype,
        "service": v.get("service"),
        "request": v.get("request", "/"),
        "receive": v.get("receive") or None,
        "checkport": _opt_int(v.get("checkport"), None),
        "virtualhost": v.get("virtualhost"),
        "login": v.get("login") or None,
        "passwd": passwd,
        "database": v.get("database") or None,
        "secret": v.get("secret") or None,
        "checkcommand": None if v.get("checkcommand") == "/bin/true" else v.get("checkcommand"),
        "checktimeout": _opt_int(v.get("checktimeout")),
        "negotiatetimeout": _opt_int(v.get("negotiatetimeout")),
        "checkcount": _opt_int(v.get("checkcount")),
        "failurecount": _opt_int(v.get("failurecount")),
        "checkinterval": _opt_int(v.get("checkinterval"), None),
        "quiescent": None if v.get("quiescent") is None else v["quiescent"] == "yes",
        "servicename": v.get("servicename"),
        "comment": v.get("comment"),
        "httpmethod": v.get("httpmethod", "GET"),
    }


def our_virtual_view(v: VirtualService) -> dict[str, object]:
    c = v.check
    fb = v.fallback
    return {
        "protocol": v.protocol.value,
        "address": v.address,
        "port": v.port,
        "fwmark": v.fwmark,
        "family": int(v.family),
        "scheduler": v.scheduler,
        "persistent": v.persistent,
        "netmask": v.netmask,
        "ops": v.ops,
        "reals": [_our_real(r) for r in v.reals],
        "fallback": None if fb is None else (fb.address, fb.port, fb.forwarding.value),
        "checktype": c.checktype,
        "service": c.service,
        "request": c.request if c.request is not None else "/",
        "receive": c.receive,
        "checkport": c.checkport,
        "virtualhost": c.virtualhost,
        "login": c.login,
        "passwd": c.passwd,
        "database": c.database,
        "secret": c.secret,
        "checkcommand": c.checkcommand,
        "checktimeout": None if c.checktimeout is None else int(c.checktimeout),
        "negotiatetimeout": None if c.negotiatetimeout is None else int(c.negotiatetimeout),
        "checkcount": c.checkcount,
        "failurecount": c.failurecount,
        "checkinterval": None if c.checkinterval is None else int(c.checkinterval),
        "quiescent": v.quiescent,
        "servicename": v.servicename,
        "comment": v.comment,
        "httpmethod": c.httpmethod,
    }


def upstream_globals_view(g: dict[str, Any]) -> dict[str, object]:
    ct = None if int(g["checktimeout"]) < 0 else int(g["checktimeout"])
    nt = None if int(g["negotiatetimeout"]) < 0 else int(g["negotiatetimeout"])
    fb = g.get("fallback")
    fb6 = g.get("fallback6")

    def fallback(f: dict[str, Any] | None) -> object:
        if not f:
            return None
        tcp = f["tcp"]
        return (_strip(tcp["server"]), int(tcp["port"] or 0), tcp["forward"])

    return {
        "checktimeout": ct if ct is not None else (nt if nt is not None else 5),
        "negotiatetimeout": nt if nt is not None else (ct if ct is not None else 30),
        "checkinterval": int(g["checkinterval"]),
        "checkcount": int(g["checkcount"]),
        "failurecount": int(g["failurecount"]),
        "autoreload": g["autoreload"] == "yes",
        "callback": g["callback"],
        "fallback": fallback(fb),
        "fallback6": fallback(fb6),
        "fallbackcommand": g["fallbackcommand"],
        "logfile": g["logfile"],
        "emailalert": g["emailalert"] or None,
        "emailalertfreq": int(g["emailalertfreq"]),
        "emailalertfrom": g["emailalertfrom"],
        "execute": sorted(g["execute"]),
        "fork": g["fork"] == "yes",
        "supervised": g["supervised"] == "yes",
        "quiescent": g["quiescent"] == "yes",
        "readdquiescent": g["readdquiescent"] == "yes",
        "cleanstop": g["cleanstop"] == "yes",
        "smtp": g["smtp"],
        "maintenancedir": g["maintenancedir"],
    }


def our_globals_view(config: Config) -> dict[str, object]:
    g = config.globals

    def fallback(f: RealServer | None) -> object:
        return None if f is None else (f.address, f.port, f.forwarding.value)

    return {
        "checktimeout": int(g.checktimeout),
        "negotiatetimeout": int(g.negotiatetimeout),
        "checkinterval": int(g.checkinterval),
        "checkcount": g.checkcount,
        "failurecount": g.failurecount,
        "autoreload": g.autoreload,
        "callback": g.callback,
        "fallback": fallback(g.fallback),
        "fallback6": fallback(g.fallback6),
        "fallbackcommand": g.fallbackcommand,
        "logfile": g.logfile if g.logfile is not None else "/var/log/ldirectord.log",
        "emailalert": g.emailalert,
        "emailalertfreq": g.emailalertfreq,
        "emailalertfrom": g.emailalertfrom,
        "execute": sorted(g.execute),
        "fork": g.fork,
        "supervised": g.supervised,
        "quiescent": g.quiescent,
        "readdquiescent": g.readdquiescent,
        "cleanstop": g.cleanstop,
        "smtp": g.smtp,
        "maintenancedir": g.maintenancedir,
    }
