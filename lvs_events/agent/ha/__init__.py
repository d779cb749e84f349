"""High availability of a director pair: who is active, who holds the VIPs.

* :mod:`lvs_events.agent.ha.timing`: the timing settings and the rule they must satisfy.
* :mod:`lvs_events.agent.ha.machine`: the pure decision logic (state + input -> next state + actions).
* :mod:`lvs_events.agent.ha.vips`: VIPs on an interface (netlink), gratuitous ARP / unsolicited NA.
* :mod:`lvs_events.agent.ha.hooks`: keepalived-style notify commands.
* :mod:`lvs_events.agent.ha.peer`: the Peer gRPC service and client (the heartbeat between the two
  agents): domain values in, protobuf only at this edge.
* :mod:`lvs_events.agent.ha.runner`: the I/O shell that feeds the machine and carries out its actions.

See ``docs/failover.md`` for the model.
"""
