"""The kernel suite, run INSIDE the IPVS VM (see ``tests/vm/test_vm_kernel.py``).

Plain Python (the VM has no pytest): every case is a function that raises on failure and may
return details; ``main`` runs them all, in order, and writes ``/job/out/kernel.json``
``{case: {"ok": bool, "seconds": float, "detail": ..., "error": str}}``. The host-side tests
assert one case each.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from lvs_events.agent.dataplane import reconcile
from lvs_events.agent.dataplane.ipvs import IpvsDataplane
from lvs_events.domain.config import Family, Forwarding, Protocol
from lvs_events.domain.events import ConfigApplied, Event, RealServerHealth
from lvs_events.domain.ipvsadm_save import format_ipvsadm_save
from lvs_events.domain.render import render
from lvs_events.domain.state import State, fold_all
from lvs_events.domain.table import Dest, Service, Table, diff, format_ipvsadm
from lvs_events.errors import DataplaneError

JOB = Path(os.environ.get("JOB", "/job"))
OUT = JOB / "out"

Case = Callable[[], Awaitable[object]]
CASES: list[tuple[str, Case]] = []


def case(fn: Case) -> Case:
    CASES.append((fn.__name__.removeprefix("case_"), fn))
    return fn


def sh(*args: str, stdin: str | None = None, netns: str | None = None) -> str:
    cmd = list(args) if netns is None else ["ip", "netns", "exec", netns, *args]
    p = subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def ipvsadm(*args: str, stdin: str | None = None, netns: str | None = None) -> str:
    return sh("ipvsadm", *args, stdin=stdin, netns=netns)


def strip_thresholds(save: str) -> str:
    """``ipvsadm -S`` never prints -x/-y (our save text does)."""
    return re.sub(r" -[xy] \d+", "", save)


def rstrip_lines(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


def check(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)


# --- tables ------------------------------------------------------------------------------------


def seed_table() -> Table:
    """The seed's ldirectord.cf through the log: ConfigApplied, every real server up, render."""
    from lvs_events.ldirectord import parse_text

    config = parse_text((JOB / "seed" / "ldirectord.cf").read_text())
    events = [Event("e0", "c", "vm", "test", "seed", 1.0, ConfigApplied(config))]
    for i, v in enumerate(config.virtuals):
        for j, r in enumerate(v.reals):
            events.append(
                Event(f"h{i}.{j}", "c", "vm", "check", "up", 2.0, RealServerHealth(v.key, r.key, True, "vm"))
            )
    return render(fold_all(State(), events))


SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh")


def feature_table() -> Table:
    """Everything ldirectord can express, on the kernel's side of it."""
    g, m, i = Forwarding.GATE, Forwarding.MASQ, Forwarding.IPIP
    services = [
        Service(Protocol.TCP, "203.0.113.10", 80, scheduler="wrr", persistent=7200, dests=(
            Dest("192.0.2.11", 80, g, 10), Dest("192.0.2.12", 80, g, 20), Dest("192.0.2.13", 80, g, 0))),
        Service(Protocol.TCP, "203.0.113.10", 443, scheduler="wlc", persistent=300, netmask="255.255.255.0",
                dests=(Dest("192.0.2.11", 8443, m, 5, lower_threshold=10, upper_threshold=100),
                       Dest("192.0.2.12", 443, i, 7, upper_threshold=50))),
        Service(Protocol.UDP, "203.0.113.53", 53, scheduler="sh", ops=True,
                schedflags=("sh-fallback", "sh-port"),
                dests=(Dest("192.0.2.21", 53, m, 1), Dest("192.0.2.22", 53, m, 1))),
        Service(Protocol.UDP, "203.0.113.54", 53, scheduler="mh", schedflags=("mh-port",),
                dests=(Dest("192.0.2.21", 53, m, 3),)),
        Service(Protocol.TCP, "203.0.113.55", 25, scheduler="rr", schedflags=("flag-3",)),
        Service(Protocol.FWM, None, 0, fwmark=5, scheduler="lc", persistent=60, netmask="255.255.0.0",
                dests=(Dest("192.0.2.31", 0, g, 1), Dest("192.0.2.32", 0, i, 2))),
        Service(Protocol.FWM, None, 0, fwmark=7, family=Family.INET6, scheduler="wlc", persistent=60,
                netmask="64",
                dests=(Dest("2001:db8::5", 0, g, 1),)),
        Service(Protocol.TCP, "2001:db8::1", 443, family=Family.INET6, scheduler="sed", persistent=300,
                netmask="48",
                dests=(Dest("2001:db8::20", 443, m, 5, upper_threshold=10), Dest("2001:db8::21", 443, g, 0))),
        Service(Protocol.UDP, "2001:db8::53", 53, family=Family.INET6, scheduler="sh", ops=True,
                schedflags=("sh-port",), dests=(Dest("2001:db8::22", 53, i, 4),)),
    ]  # fmt: skip
    for n, sched in enumerate(SCHEDULERS):
        services.append(
            Service(
                Protocol.TCP,
                f"198.18.1.{n + 1}",
                80,
                scheduler=sched,
                dests=(Dest(f"198.19.1.{n + 1}", 8080, m, n + 1),),
            )
        )
    return Table(tuple(services))


def dataplane(**kw: object) -> IpvsDataplane:
    return IpvsDataplane(**kw)  # type: ignore[arg-type]


def masq_table(services: int) -> Table:
    """``services`` TCP services of 4 masq real servers each, weight 1 (the drift cases' table)."""
    return Table(tuple(
        Service(Protocol.TCP, f"10.{i // 250}.{i % 250}.1", 80,
                dests=tuple(Dest(f"10.200.{i % 250}.{j}", 80, Forwarding.MASQ, 1) for j in range(1, 5)))
        for i in range(services)
    ))  # fmt: skip


async def fresh_kernel() -> None:
    ipvsadm("-C")


# --- cases -------------------------------------------------------------------------------------


@case
async def case_seed_listing() -> object:
    await fresh_kernel()
    desired = seed_table()
    async with dataplane() as dp:
        ops, _after = await dp.reconcile(desired)
        kernel = await dp.dump_kernel()
    listing = ipvsadm("-L", "-n")
    expected = format_ipvsadm(desired)
    check(
        rstrip_lines(listing) == rstrip_lines(expected), f"ipvsadm -L -n differs:\n{listing}\nvs\n{expected}"
    )
    check(kernel.digest() == desired.digest(), "dump != desired")
    return {"ops": len(ops), "listing": listing, "digest": kernel.digest()}


@case
async def case_features_roundtrip() -> object:
    await fresh_kernel()
    desired = feature_table()
    async with dataplane() as dp:
        await dp.reconcile(desired)
        kernel = await dp.dump_kernel()
    check(kernel.digest() == desired.digest(), f"dump != desired: {diff(kernel, desired)}")
    save = ipvsadm("-S", "-n")
    ours = format_ipvsadm_save(desired)
    check(save == strip_thresholds(ours), f"ipvsadm -S -n differs:\n{save}\nvs ours\n{ours}")
    thresholds = ipvsadm("-L", "-n", "--thresholds")
    check("100" in thresholds and "50" in thresholds, f"thresholds missing:\n{thresholds}")
    return {"services": len(desired.services), "save": save}


@case
async def case_edits_roundtrip() -> object:
    """Every kind of edit, each reconciled and dumped back (and pyroute2 bug 2 checked)."""
    await fresh_kernel()
    t0 = feature_table()
    steps: list[tuple[str, Table]] = []

    def edit(key: str, f: Callable[[Service], Service | None], table: Table) -> Table:
        out: list[Service] = []
        for s in table.services:
            if s.key == key:
                ns = f(s)
                if ns is not None:
                    out.append(ns)
            else:
                out.append(s)
        return Table(tuple(out))

    def weights(s: Service) -> Service:
        return replace(s, dests=tuple(replace(d, weight=d.weight + 1) for d in s.dests))

    t1 = edit("TCP 203.0.113.10:443", weights, t0)  # masq + ipip weight-only edits
    steps.append(("weight only (masq/ipip kept)", t1))
    t2 = edit("TCP 203.0.113.10:443", lambda s: replace(s, dests=tuple(
        replace(d, lower_threshold=0, upper_threshold=7) for d in s.dests)), t1)  # fmt: skip
    steps.append(("thresholds", t2))
    t3 = edit("TCP 203.0.113.10:80", lambda s: replace(s, scheduler="rr", persistent=None), t2)
    steps.append(("scheduler and persistence off", t3))
    t4 = edit("TCP 203.0.113.10:80", lambda s: replace(s, persistent=600, netmask="255.255.255.240"), t3)
    steps.append(("persistence + netmask on", t4))
    t5 = edit("UDP 203.0.113.53:53", lambda s: replace(s, ops=False, schedflags=("sh-port",)), t4)
    steps.append(("ops off, schedflags", t5))
    t6 = edit("TCP 203.0.113.10:80", lambda s: replace(s, dests=tuple(
        replace(d, forwarding=Forwarding.MASQ) for d in s.dests)), t5)  # fmt: skip
    steps.append(("forwarding gate -> masq", t6))
    t7 = edit("FWM 7 IPv6", lambda s: None, t6)
    t7 = edit("TCP 203.0.113.10:443", lambda s: replace(s, dests=s.dests[:1]), t7)
    steps.append(("remove a service and a destination", t7))
    t8 = edit("TCP [2001:db8::1]:443", lambda s: replace(s, netmask="64", scheduler="nq"), t7)
    steps.append(("IPv6 netmask + scheduler", t8))
    results = []
    async with dataplane() as dp:
        await dp.reconcile(t0)
        for name, table in steps:
            ops, _ = await dp.reconcile(table)
            kernel = await dp.dump_kernel()
            save = ipvsadm("-S", "-n")
            ok = kernel.digest() == table.digest() and save == strip_thresholds(format_ipvsadm_save(table))
            results.append({"step": name, "ops": [str(o) for o in ops], "ok": ok})
            check(ok, f"{name}: kernel != desired: {[str(o) for o in diff(kernel, table)]}\n{save}")
    return results


@case
async def case_save_restore() -> object:
    """``ipvsadm -R`` accepts format_ipvsadm_save's text; ``-S -n`` gives it back; -x/-y kept."""
    await fresh_kernel()
    table = feature_table()
    text = format_ipvsadm_save(table)
    ipvsadm("-R", stdin=text)
    back = ipvsadm("-S", "-n")
    check(back == strip_thresholds(text), f"ipvsadm -S -n after -R differs:\n{back}\nvs\n{text}")
    async with dataplane() as dp:
        dp.claim(table)
        kernel = await dp.dump_kernel()
    check(
        kernel.digest() == table.digest(), f"restored table != table: {[str(o) for o in diff(kernel, table)]}"
    )
    seed = seed_table()
    await fresh_kernel()
    ipvsadm("-R", stdin=format_ipvsadm_save(seed))
    check(rstrip_lines(ipvsadm("-L", "-n")) == rstrip_lines(format_ipvsadm(seed)), "seed after -R differs")
    return {"lines": len(text.splitlines())}


@case
async def case_order_never_drops() -> object:
    """Replacing every real server of a service: after each single op the service still has a
    destination with weight > 0 (adds before deletes), checked on the kernel."""
    await fresh_kernel()
    m = Forwarding.MASQ
    s0 = Service(Protocol.TCP, "203.0.113.99", 80, scheduler="wrr",
                 dests=(Dest("192.0.2.1", 80, m, 5), Dest("192.0.2.2", 80, m, 5)))  # fmt: skip
    s1 = replace(s0, scheduler="wlc", dests=(Dest("192.0.2.3", 80, m, 5), Dest("192.0.2.4", 80, m, 5)))
    t0, t1 = Table((s0,)), Table((s1,))
    trace = []
    async with dataplane() as dp:
        await dp.reconcile(t0)
        ops = diff(await dp.dump(), t1)
        for op in ops:
            await dp.apply([op])
            live = (await dp.dump_kernel()).service(s0.key)
            up = 0 if live is None else sum(1 for d in live.dests if d.weight > 0)
            trace.append((str(op), up))
            check(up > 0, f"no live destination after {op}")
        check((await dp.dump_kernel()).digest() == t1.digest(), "end state differs")
    return trace


@case
async def case_drift_repair() -> object:
    await fresh_kernel()
    desired = seed_table()
    async with dataplane() as dp:
        await dp.reconcile(desired)
        ipvsadm("-e", "-t", "203.0.113.10:80", "-r", "192.0.2.13:80", "-g", "-w", "0")
        ipvsadm("-d", "-t", "203.0.113.20:443", "-r", "198.51.100.12:443")
        ipvsadm("-a", "-t", "203.0.113.20:80", "-r", "198.51.100.99:80", "-m", "-w", "5")
        ipvsadm("-E", "-t", "203.0.113.10:443", "-s", "rr", "-p", "7200")
        ipvsadm("-D", "-t", "203.0.113.20:80")
        drift = await dp.drift(desired)
        lines = drift.lines()
        check(not drift.clean, "drift not detected")
        check(any("192.0.2.13:80 w=30" in x for x in lines), f"weight drift missing: {lines}")
        check(any(x.startswith("add-service TCP 203.0.113.20:80") for x in lines), f"{lines}")
        check(any(x.startswith("edit-service TCP 203.0.113.10:443") for x in lines), f"{lines}")
        repaired = await dp.check_and_repair(desired)
        check(repaired.lines() == lines, f"the periodic check repaired something else: {repaired.lines()}")
        again = await dp.drift(desired)
        check(again.clean, f"a second check still finds drift: {again.lines()}")
        await dp.apply(list(drift.ops))  # idempotent against races: re-applying is harmless
        kernel = await dp.dump_kernel()
    check(kernel.digest() == desired.digest(), "not repaired")
    check(rstrip_lines(ipvsadm("-L", "-n")) == rstrip_lines(format_ipvsadm(desired)), "listing differs")
    return {"drift": lines}


@case
async def case_foreign_untouched() -> object:
    await fresh_kernel()
    ipvsadm("-A", "-t", "198.18.0.1:80", "-s", "rr")
    ipvsadm("-a", "-t", "198.18.0.1:80", "-r", "10.9.9.9:80", "-m", "-w", "3")
    ipvsadm("-A", "-f", "99", "-s", "wlc")
    before = ipvsadm("-S", "-n")
    desired = seed_table()
    async with dataplane() as dp:
        await dp.reconcile(desired)
        smaller = Table(desired.services[1:])
        ops, _ = await dp.reconcile(smaller)
        check(any(o.kind == "del-service" for o in ops), "owned service not removed")
        foreign = await dp.foreign()
        mine = await dp.dump_kernel()
        drift = await dp.drift(smaller)
    keys = sorted(s.key for s in foreign.services)
    check(keys == ["FWM 99", "TCP 198.18.0.1:80"], f"foreign: {keys}")
    check(mine.digest() == smaller.digest(), "owned part differs")
    check(drift.clean and sorted(drift.foreign) == keys, f"drift {drift}")
    after = ipvsadm("-S", "-n")
    for line in before.splitlines():
        check(line in after.splitlines(), f"foreign rule changed: {line}")
    return {"foreign": keys}


@case
async def case_adopt_and_restart() -> object:
    """A desired service an operator already created is adopted; the owned set survives a restart."""
    await fresh_kernel()
    ipvsadm("-A", "-t", "203.0.113.10:80", "-s", "rr")
    ipvsadm("-a", "-t", "203.0.113.10:80", "-r", "192.0.2.11:80", "-m", "-w", "1")
    desired = seed_table()
    owned_path = Path("/tmp/owned.json")
    owned_path.unlink(missing_ok=True)  # noqa: ASYNC240 -- the suite runs its cases one at a time
    async with dataplane(owned_path=owned_path) as dp:
        await dp.apply(diff(Table(), desired))  # blind adds: EEXIST -> set
        check(
            (await dp.dump_kernel()).digest() == desired.digest(),
            f"adopted table differs: {[str(o) for o in diff(await dp.dump_kernel(), desired)]}",
        )
        adopted = sorted(dp.stats.adopted)
    smaller = Table(desired.services[:2])
    async with dataplane(owned_path=owned_path) as dp2:  # a restarted agent: the owned set is on disk
        ops, after = await reconcile(dp2, smaller)
    check(after.digest() == smaller.digest(), "restart reconcile differs")
    check(sum(o.kind == "del-service" for o in ops) == 2, f"ops {[str(o) for o in ops]}")
    return {"adopted": adopted, "ops": [str(o) for o in ops]}


@case
async def case_refusal_is_typed() -> object:
    await fresh_kernel()
    bad = Table((Service(Protocol.TCP, "203.0.113.77", 80, scheduler="no-such-scheduler"),))
    async with dataplane() as dp:
        try:
            await dp.reconcile(bad)
        except DataplaneError as e:
            check(e.__cause__ is not None, "not chained")
            good, _ = await dp.reconcile(seed_table())  # usable afterwards
            return {"error": str(e), "cause": repr(e.__cause__), "ops_after": len(good)}
    raise AssertionError("no DataplaneError")


@case
async def case_drift_dump_does_not_block_applies() -> object:
    """The periodic check's dump (``begin_drift_check``) lets applies through between its
    chunks; a change applied meanwhile is read again (not taken for drift), a change behind our
    back is."""
    await fresh_kernel()
    table = masq_table(300)
    svc = table.services[150]
    other = table.services[10]

    def with_weight(w: int) -> Table:
        changed = replace(svc, dests=(replace(svc.dests[0], weight=w), *svc.dests[1:]))
        return Table(tuple(changed if s.key == svc.key else s for s in table.services))

    async with dataplane() as dp:
        await dp.reconcile(table)
        dump_task = asyncio.create_task(dp.begin_drift_check())
        during, w = 0, 1
        while not dump_task.done():
            w = w % 50 + 2
            await dp.reconcile_services({svc.key: with_weight(w).service(svc.key)})
            during += 0 if dump_task.done() else 1
            await asyncio.sleep(0)  # as the agent's loop does between events
        dump = dump_task.result()
        w += 1  # after the dump, before the comparison: still read again
        await dp.reconcile_services({svc.key: with_weight(w).service(svc.key)})
        drift = await dp.drift(with_weight(w), since=dump)
        check(during > 0, "no apply completed while the dump ran")
        check(drift.clean, f"changes applied during the dump were taken for drift: {drift.lines()}")
        check((await dp.dump()).digest() == with_weight(w).digest(), "the shadow after drift(since=)")
        # something behind our back is still found (and the services applied meanwhile are not)
        ipvsadm("-e", "-t", f"{other.address}:80", "-r", f"{other.dests[0].address}:80", "-m", "-w", "77")
        dump = await dp.begin_drift_check()
        w += 1
        await dp.reconcile_services({svc.key: with_weight(w).service(svc.key)})
        drift = await dp.drift(with_weight(w), since=dump)
        lines = drift.lines()
        want = f"edit-dest {other.key} -> {other.dests[0].key} w=1"
        check(lines == [want], f"expected only {want!r}: {lines}")
        kernel = await dp.dump_kernel()
    check(kernel.service(svc.key) == with_weight(w).service(svc.key), "the kernel lost the applied weight")
    return {"applies_during_dump": during, "drift": lines}


@case
async def case_drift_compare_off_the_lock() -> object:
    """The agent's check: ``snapshot_kernel`` under the lock, ``compare`` (the whole table) in a thread
    while applies go on, ``recheck`` of only the services found different: a change behind our
    back is found and its repair is read again from the kernel; one the agent's own apply put
    right meanwhile is not repaired twice."""
    await fresh_kernel()
    table = masq_table(300)
    svc, other = table.services[150], table.services[10]

    def with_weight(w: int) -> Table:
        changed = replace(svc, dests=(replace(svc.dests[0], weight=w), *svc.dests[1:]))
        return Table(tuple(changed if s.key == svc.key else s for s in table.services))

    async with dataplane() as dp:
        await dp.reconcile(table)
        ipvsadm("-e", "-t", f"{other.address}:80", "-r", f"{other.dests[0].address}:80", "-m", "-w", "77")
        w = 2
        seen = await dp.snapshot_kernel(table, await dp.begin_drift_check())
        compare_task = asyncio.create_task(dp.compare(seen, table))
        during = 0
        while not compare_task.done():
            w = w % 50 + 2
            await dp.reconcile_services({svc.key: with_weight(w).service(svc.key)})
            during += 0 if compare_task.done() else 1
            await asyncio.sleep(0)
        found = compare_task.result()
        check(during > 0, "no apply completed while the comparison ran")
        want = f"edit-dest {other.key} -> {other.dests[0].key} w=1"
        check(found.lines() == [want], f"compare: expected only {want!r}: {found.lines()}")
        again = await dp.recheck(with_weight(w), [op.service for op in found.ops])
        check(again.lines() == [want], f"recheck: expected only {want!r}: {again.lines()}")
        await dp.apply(list(again.ops))
        # found different, then put right by the agent before the recheck: nothing to repair
        ipvsadm("-e", "-t", f"{other.address}:80", "-r", f"{other.dests[0].address}:80", "-m", "-w", "55")
        seen = await dp.snapshot_kernel(with_weight(w), await dp.begin_drift_check())
        found = await dp.compare(seen, with_weight(w))
        check(len(found.ops) == 1, f"the second change behind our back: {found.lines()}")
        await dp.reconcile_services({other.key: other})  # the shadow is the kernel: 55 -> 1
        overtaken = await dp.recheck(with_weight(w), [op.service for op in found.ops])
        check(overtaken.clean, f"repaired twice: {overtaken.lines()}")
        # a service deleted behind our back: found missing, read again (absent), put back
        ipvsadm("-D", "-t", f"{other.address}:80")
        seen = await dp.snapshot_kernel(with_weight(w), await dp.begin_drift_check())
        found = await dp.compare(seen, with_weight(w))
        gone = await dp.recheck(with_weight(w), [op.service for op in found.ops])
        kinds = sorted({op.kind for op in gone.ops})
        check(kinds == ["add-dest", "add-service"], f"the deleted service's repair: {gone.lines()}")
        await dp.apply(list(gone.ops))
        kernel = await dp.dump_kernel()
    check(kernel.digest() == with_weight(w).digest(), "the kernel after the check")
    return {"applies_during_compare": during, "drift": found.lines()}


@case
async def case_event_loop_not_blocked() -> object:
    """A 300-service load while a 1 ms ticker runs: the loop's longest stall stays small."""
    await fresh_kernel()
    table = masq_table(300)
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    t = asyncio.create_task(ticker())
    t0 = time.perf_counter()
    async with dataplane() as dp:
        await dp.reconcile(table)
    took = time.perf_counter() - t0
    stop.set()
    await t
    worst = max(gaps)
    check(worst < max(0.25, took / 4), f"event loop stalled {worst:.3f}s during a {took:.2f}s apply")
    return {"apply_s": round(took, 3), "ticks": len(gaps), "worst_gap_ms": round(worst * 1000, 1)}


@case
async def case_two_directors() -> object:
    """Two network namespaces, each its own IPVS, each programmed by its own agent process from
    the same desired table: the dumped tables have the same digest and the same ipvsadm -S."""
    await fresh_kernel()
    desired = seed_table()
    blob = json.dumps(desired.to_json())
    digests = {}
    saves = {}
    for ns in ("director-a", "director-b"):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)  # noqa: ASYNC221
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "set", "lo", "up", netns=ns)
        out = sh(sys.executable, str(Path(__file__).with_name("director.py")), stdin=blob, netns=ns)
        digests[ns] = json.loads(out)["digest"]
        saves[ns] = ipvsadm("-S", "-n", netns=ns)
    root = ipvsadm("-S", "-n")
    check(len(set(digests.values())) == 1, f"digests differ: {digests}")
    check(digests["director-a"] == desired.digest(), "digest != desired")
    check(saves["director-a"] == saves["director-b"] == format_ipvsadm_save(desired), "ipvsadm -S differs")
    check(root == "", f"the root namespace was touched: {root}")
    return {"digests": digests}


NORMALISE_CF = """
virtual=203.0.113.80:80
	real=192.0.2.81:8080 gate 5
	real=192.0.2.82:8080 masq 5
	real=192.0.2.83:8080 ipip 5
	scheduler=wrr
	persistent=300
	netmask=255.255.255.255
	checktype=on
	service=none
virtual=203.0.113.53:53
	real=192.0.2.84:53 masq 1
	protocol=udp
	scheduler=sh
	schedflags=flag-2,flag-1
	netmask=255.255.255.0
	checktype=on
	service=none
virtual=9
	real=192.0.2.85:8080 gate 1
	scheduler=mh
	schedflags=flag-2
	persistent=60
	netmask=255.255.0.0
	checktype=on
	service=none
virtual6=[2001:db8::80]:443
	real6=[2001:db8::81]:8443 gate 1
	scheduler=rr
	persistent=60
	netmask=128
	checktype=on
	service=none
"""


@case
async def case_render_normalised() -> object:
    """The render's table is what the kernel dumps back: gate/ipip ports, default netmasks, flag
    names; a real dump finds nothing to repair."""
    from lvs_events.ldirectord import parse_text

    await fresh_kernel()
    config = parse_text(NORMALISE_CF, "normalise.cf")
    desired = render(fold_all(State(), [Event("e0", "c", "vm", "t", "", 1.0, ConfigApplied(config))]))
    async with dataplane(use_shadow=False) as dp:
        await dp.reconcile(desired)
        kernel = await dp.dump_kernel()
        drift = await dp.drift(desired)
    check(kernel.digest() == desired.digest(), f"dump != render: {[str(o) for o in diff(kernel, desired)]}")
    check(drift.clean, f"a real dump finds drift: {drift.lines()}")
    save = ipvsadm("-S", "-n")
    check(save == strip_thresholds(format_ipvsadm_save(desired)), f"ipvsadm -S -n differs:\n{save}")
    return {"save": save}


@case
async def case_agent_per_event_path() -> object:
    """The agent's per-event path on the kernel: ApplyCore renders only what each event touched,
    ``reconcile_changed`` applies just that; after 60 events the kernel holds the full render."""
    from lvs_events.agent.core import ApplyCore
    from lvs_events.agent.dataplane import reconcile_changed
    from lvs_events.domain.events import AdminAction, AdminOverride

    await fresh_kernel()
    seed = seed_table()
    from lvs_events.ldirectord import parse_text

    config = parse_text((JOB / "seed" / "ldirectord.cf").read_text())
    core = ApplyCore("vm")
    core.step(Event("e0", "c", "vm", "t", "", 1.0, ConfigApplied(config), revision=1))
    pairs = [(v.key, r.key) for v in config.virtuals for r in v.reals]
    rev = 1
    for vk, rk in pairs:
        rev += 1
        core.step(
            Event(f"h{rev}", "c", "vm", "t", "", 2.0, RealServerHealth(vk, rk, True, "vm"), revision=rev)
        )
    partial = 0
    ops_total = 0
    async with dataplane() as dp:
        ready = core.ready(0.0, caught_up=True)
        check(ready is not None and ready.desired is not None and ready.changed is None, "first: full")
        assert ready is not None
        assert ready.desired is not None
        await dp.reconcile(ready.desired)
        core.advance(ready, 0.0, actual_digest=ready.desired_digest, published=True)
        check(ready.desired.digest() == seed.digest(), "the core's table != the seed's")
        actions = [AdminAction.DRAIN, AdminAction.ENABLE, AdminAction.WEIGHT, AdminAction.DISABLE]
        for i in range(60):
            rev += 1
            vk, rk = pairs[(i * 7) % len(pairs)]
            if i % 5 == 4:
                payload: object = RealServerHealth(vk, rk, i % 2 == 0, "vm")
            else:
                payload = AdminOverride(vk, rk, actions[i % 4], weight=i % 9)
            core.step(Event(f"x{rev}", "c", "vm", "t", "", 3.0 + i, payload, revision=rev))  # type: ignore[arg-type]
            ready = core.ready(float(i), caught_up=True)
            if ready is None or ready.desired is None:
                continue
            check(ready.changed is not None, f"event {i}: not the per-event path")
            assert ready.changed is not None
            ops, ok = await reconcile_changed(dp, ready.changed)
            check(ok, f"event {i}: the services did not verify")
            partial += 1
            ops_total += len(ops)
            core.advance(ready, float(i), actual_digest=ready.desired_digest, published=True)
        kernel = await dp.dump_kernel()
        want = render(core.state)
        check(kernel.digest() == want.digest(), f"kernel != render: {[str(o) for o in diff(kernel, want)]}")
        check((await dp.drift(want)).clean, "drift after the per-event path")
    return {"partial_reconciles": partial, "ops": ops_total}


async def run_all(selected: set[str] | None) -> dict[str, object]:
    results: dict[str, object] = {}
    for name, fn in CASES:
        if selected and name not in selected:
            continue
        t0 = time.perf_counter()
        try:
            detail = await fn()
            results[name] = {"ok": True, "seconds": round(time.perf_counter() - t0, 3), "detail": detail}
        except Exception as e:
            results[name] = {
                "ok": False,
                "seconds": round(time.perf_counter() - t0, 3),
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(),
            }
        status = "ok" if results[name]["ok"] else "FAIL"  # type: ignore[index]
        print(f"kernel-suite {name}: {status} ({results[name]['seconds']}s)", flush=True)  # type: ignore[index]
    with contextlib.suppress(RuntimeError):
        ipvsadm("-C")
    return results


def main() -> int:
    selected = set(sys.argv[1:]) or None
    OUT.mkdir(parents=True, exist_ok=True)
    results = asyncio.run(run_all(selected))
    (OUT / "kernel.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
