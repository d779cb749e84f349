"""High availability of a director pair: who is active, who holds the VIPs.

* :mod:`agent.ha.timing`: the timing settings and the rule they must satisfy.
* :mod:`agent.ha.machine`: the pure decision logic (state + input -> next state + actions).
* :mod:`agent.ha.vips`: VIPs on an interface (netlink), gratuitous ARP / unsolicited NA.
* :mod:`agent.ha.hooks`: keepalived-style notify commands.
* :mod:`agent.ha.peer`: the Peer gRPC service and client (the heartbeat between the two agents).
* :mod:`agent.ha.runner`: the I/O shell that feeds the machine and carries out its actions.

See ``docs/failover.md`` for the model.
"""
