"""``lvs-agent``: replays the event log into this director's IPVS table.

Shaped like a replicated state machine's apply loop (cf. etcd-io/raft's ``Ready``): a pure
decision step (:mod:`lvs_events.agent.core`) that folds log items and says what to do, and a thin I/O shell
(:mod:`lvs_events.agent.runtime`) that does it: reconcile the dataplane, persist the applied revision,
publish ``TableApplied``.
"""
