#!/usr/bin/env bash
# The lvs-events demo: a single-member etcd, one coordinator and two agents (master and slave,
# as in the how-to) on the in-memory dataplane, loading the how-to's ldirectord.cf unchanged.
#
# Everything runs inside a private network namespace in which the seed's real-server addresses
# (192.0.2.11-13, 198.51.100.11-13) sit on the loopback interface and answer "OK webN", so the
# health checks reach real servers and nothing leaves the machine. Needs root (ip netns).
#
# It shows: the config applied through the log, both agents' tables (same digest), an operator
# drain and enable with who and why, a real server stopped and started again, and the audit log.
#
# Every gRPC connection is mutual TLS: a CA made for the demo (in $RUN/pki) signs the directors'
# certificates (master, slave: the coordinator uses master's) and the operator alice's, which the
# lvs-events calls use (through $LVS_EVENTS_CA/_CERT/_KEY). etcd stays plaintext on the
# namespace's loopback.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
SHARED=${LVS_SHARED_DIR:-$REPO/../shared}
SEED=${DEMO_CONFIG:-$SHARED/seed/ldirectord.cf}
RUN=${DEMO_DIR:-$REPO/run/demo}
NS=lvs-demo-$$
CLUSTER=demo

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

[ -f "$SEED" ] || { echo "demo: $SEED not found (set LVS_SHARED_DIR)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "demo: needs root (network namespaces)" >&2; exit 2; }

missing=()
for pair in etcd:etcd-server ip:iproute2 openssl:openssl curl:curl python3:python3-venv; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
if [ ! -x .venv/bin/lvs-events ]; then
    say "installing lvs-events into .venv"
    python3 -m venv .venv
    .venv/bin/python -m pip install -q -e .
fi
BIN=$REPO/.venv/bin

rm -rf "$RUN"
mkdir -p "$RUN"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT

in_ns() { ip netns exec "$NS" "$@"; }
bg() { local log=$1; shift; ip netns exec "$NS" "$@" >"$RUN/$log" 2>&1 & PIDS+=($!); }  # $! is the program itself
PKI=$RUN/pki
tls() { TLS=(--tls-ca "$PKI/ca.pem" --tls-cert "$PKI/$1.pem" --tls-key "$PKI/$1-key.pem"); }  # tls NAME: its flags in TLS
ALICE=(env LVS_EVENTS_CA="$PKI/ca.pem" LVS_EVENTS_CERT="$PKI/alice.pem" LVS_EVENTS_KEY="$PKI/alice-key.pem")
cli() { in_ns "${ALICE[@]}" "$BIN/lvs-events" --endpoints 127.0.0.1:7420 --cluster "$CLUSTER" "$@"; }
pki() {  # `lvs-events pki ...`, through its module
    "$BIN/python" -c 'import argparse, sys
from lvs_events.security import pki_cli
p = argparse.ArgumentParser(prog="lvs-events")
pki_cli.add_parser(p.add_subparsers(dest="command", required=True))
sys.exit(pki_cli.run(p.parse_args(sys.argv[1:])))' "$@"
}

say "a CA and certificates in $PKI: directors master and slave, operator alice"
pki pki init --dir "$PKI" --director master --director slave --operator alice >/dev/null

say "network namespace $NS: real servers and VIPs on its loopback"
ip netns add "$NS"
in_ns ip link set lo up
for a in 192.0.2.11 192.0.2.12 192.0.2.13 198.51.100.11 198.51.100.12 198.51.100.13 203.0.113.10 203.0.113.20; do
    in_ns ip addr add "$a/32" dev lo
done
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=demo -keyout "$RUN/key.pem" \
    -out "$RUN/cert.pem" 2>/dev/null
web() {  # web NAME ADDR: HTTP on :80 and HTTPS on :443
    bg "$1.log" "$BIN/python" deploy/demo_realservers.py "$RUN/cert.pem" "$RUN/key.pem" \
        "$2:80:$1" "$2:443:$1:tls"
    eval "PID_$1=\$!"
}
web web1 192.0.2.11; web web2 192.0.2.12; web web3 192.0.2.13
web web4 198.51.100.11; web web5 198.51.100.12; web web6 198.51.100.13
answers() {  # answers ADDR: wait until the real server at ADDR says "OK" on http and https
    for _ in $(seq 100); do
        # (no `| grep -q`: under pipefail the writer's broken pipe fails the pipeline)
        [[ "$(in_ns curl -fsS "http://$1/areyouthere.php" 2>/dev/null)" == *OK* ]] &&
            [[ "$(in_ns curl -kfsS "https://$1/areyouthere.php" 2>/dev/null)" == *OK* ]] && return 0
        sleep 0.1
    done
    echo "demo: real server $1 does not answer" >&2
    return 1
}
for a in 192.0.2.11 192.0.2.12 192.0.2.13 198.51.100.11 198.51.100.12 198.51.100.13; do answers "$a"; done

say "etcd (single member, data in $RUN/etcd) and one coordinator"
bg etcd.log etcd --name demo --data-dir "$RUN/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster demo=http://127.0.0.1:2380
for _ in $(seq 50); do in_ns curl -fsS http://127.0.0.1:2379/health >/dev/null 2>&1 && break; sleep 0.2; done
tls master  # the coordinator runs on master, with its certificate
bg coordinator.log "$BIN/lvs-coordinator" --listen 127.0.0.1:7420 --etcd-endpoints 127.0.0.1:2379 \
    --cluster "$CLUSTER" "${TLS[@]}" --log-format json
for _ in $(seq 50); do cli --timeout 1 status >/dev/null 2>&1 && break; sleep 0.2; done

say "lvs-events tail -f (live, in $RUN/tail.log)"
bg tail.log "${ALICE[@]}" "$BIN/lvs-events" --endpoints 127.0.0.1:7420 --cluster "$CLUSTER" tail -f

say "two agents, master and slave, both loading $SEED unchanged"
cli config validate "$SEED"
for node in master slave; do
    extra=()
    [ "$node" = master ] && extra=(--publish-config)
    tls "$node"
    bg "$node.log" "$BIN/lvs-agent" --node "$node" --cluster "$CLUSTER" --coordinators 127.0.0.1:7420 \
        "${TLS[@]}" --state-dir "$RUN/$node" --config "$SEED" --log-format json "${extra[@]}"
done

wait_sync() {  # until both agents report the table the log renders now
    for _ in $(seq 100); do
        if cli status -o json | "$BIN/python" -c '
import json, sys
d = json.load(sys.stdin)
sys.exit(0 if all(d["nodes"].get(n, {}).get("in_sync") for n in ("master", "slave")) else 1)'; then
            return 0
        fi
        sleep 0.3
    done
    echo "demo: agents did not converge" >&2
    return 1
}
# `status` exits 5-7 for a state of the cluster (a node silent or behind, no active director):
# shown, not an error of the demo. A new health verdict can land between wait_sync and it.
show_status() { cli status || [ $? -ge 5 ]; }

sleep 3  # a few check rounds
wait_sync
show_status

say "operator: drain web3 on 203.0.113.10:80 for maintenance"
cli drain "TCP 203.0.113.10:80" 192.0.2.13:80 --reason "kernel upgrade on web3" --operator alice
wait_sync
serving() {  # serving yes|no DEST: wait until DEST takes (or no longer takes) new connections
    local weight
    for _ in $(seq 100); do
        weight=$(cli table | awk -v d="$2" '$1 == "->" && $2 == d {print $4; exit}')
        if [ -n "$weight" ] && [ "$weight" != 0 ]; then
            [ "$1" = yes ] && return 0
        else
            [ "$1" = no ] && return 0  # gone, or at weight 0 with quiescent=yes
        fi
        sleep 0.3
    done
    echo "demo: the table never got to '$1 $2'" >&2
    return 1
}
observed_up() {  # observed_up NODE VIRTUAL REAL: until NODE's own checks reported REAL up
    for _ in $(seq 100); do  # (each agent spreads its first checks over checkinterval)
        local seen  # (not `| grep -q`: under pipefail the writer's broken pipe fails the test)
        seen=$(cli tail --type RealServerHealth --node "$1" --vip "${2%:*}" --real "$3")
        [[ $seen == *" $2 -> $3 UP seen by $1 "* ]] && return 0
        sleep 0.3
    done
    echo "demo: $1 never reported $3 up in $2" >&2
    return 1
}
for node in master slave; do observed_up "$node" "203.0.113.10:80" "192.0.2.12:80"; done
say "real server web2 stops answering: the checks take it out (checkinterval=5 in the seed)"
kill "$PID_web2"
serving no 192.0.2.12:80
sleep 6  # one more check interval: both directors have seen it (the log keeps both views)
wait_sync
say "the table now (lvs-events table), like ipvsadm -L -n"
cli table
say "web2 comes back; the operator enables web3"
web web2 192.0.2.12
answers 192.0.2.12
cli enable "TCP 203.0.113.10:80" 192.0.2.13:80 --reason "web3 upgraded" --operator alice
serving yes 192.0.2.12:80
sleep 6
wait_sync

say "lvs-events tail: who changed what, when and why (the whole log is in $RUN/tail.log)"
cli tail --rev 1 --type ConfigApplied --type AdminOverride
cli tail --rev 1 --type RealServerHealth --real 192.0.2.12
say "lvs-events status"
show_status
for node in master slave; do
    say "$node's in-memory IPVS table ($RUN/$node/table.txt)"
    cat "$RUN/$node/table.txt"
done
say "done: logs in $RUN"
