#!/bin/bash
# PID 1's job inside the IPVS VM: load IPVS, run the kernel suite, the traffic drill, then the
# failover drill (the whole stack: etcd, coordinator, two HA agents).
# Results: /job/out/*.json (copied back to the host's OUT_DIR).
set -u
export PYTHONPATH=/job/src:/job/site PYTHONDONTWRITEBYTECODE=1 JOB=/job
mkdir -p /job/out
modprobe ip_vs
for s in rr wrr lc wlc lblc lblcr dh sh sed nq fo ovf mh; do modprobe "ip_vs_$s"; done
modprobe ipip 2>/dev/null || true
what=${1:-all}
rc=0
if [ "$what" = all ] || [ "$what" = kernel ]; then
    python3 /job/suite/kernel_cases.py || rc=1
fi
if [ "$what" = all ] || [ "$what" = traffic ]; then
    python3 /job/suite/traffic.py || rc=1
fi
if [ "$what" = all ] || [ "$what" = failover ]; then
    python3 /job/suite/failover.py || rc=1
fi
if [ "$what" = bench ]; then
    python3 /job/bench/bench_kernel.py "${@:2}" > /job/out/bench.json || rc=1
    cat /job/out/bench.json
fi
exit $rc
