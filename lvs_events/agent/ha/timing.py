"""HA timing settings, validated at load.

The rule (cf. Patroni's ``loop_wait + 2*retry_timeout <= ttl``)::

    keepalive_interval + 2 * retry_deadline <= authority;  authority + margin <= lease_ttl
    heartbeat_interval * miss_limit < authority

``authority`` is how long an active keeps acting (and holding the VIPs) after the last moment its
leadership was *confirmed*, by etcd (a keepalive that found the leader key still holding its term)
or by its peer (a heartbeat reply acknowledging its term). A single failed keepalive attempt must
not cost the VIPs (``keepalive + 2 * retry``), and the active must have let go before its lease
can expire and someone else can campaign (``<= lease_ttl``). A standby that *takes over* waits
``authority`` after etcd granted it before adding the VIPs: by then the old active, wherever it
is, has either been told it lost or has let go by itself (plus ``margin`` for timer slack).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lvs_events.errors import LvsEventsError

__all__ = ["HaTiming", "TimingError"]


class TimingError(LvsEventsError):
    """HA timing settings that do not fit together."""


@dataclass(frozen=True, slots=True)
class HaTiming:
    heartbeat_interval: float = 0.1  # seconds between heartbeats to the peer
    miss_limit: int = 5  # heartbeats missed before the peer counts as silent
    keepalive_interval: float = 0.5  # seconds between lease keepalives (via the coordinator)
    retry_deadline: float = 0.75  # deadline of one keepalive / election RPC
    authority: float = 2.5  # seconds an active keeps acting after its last confirmation
    lease_ttl: int = 5  # etcd lease TTL, whole seconds (etcd 3.4: at least ~1.5 x election timeout)
    margin: float = 0.05  # slack on top of `authority` for the old active's timers and netlink calls
    linger: float = 0.5  # planned switchover: the old active keeps accepting (ARP-silent) this long

    @property
    def silence(self) -> float:
        """How long the peer must be silent before a standby may take over."""
        return self.heartbeat_interval * self.miss_limit

    def validate(self) -> HaTiming:
        """Return self, or raise :class:`TimingError` naming the rule that is broken."""
        positive = {
            "heartbeat_interval": self.heartbeat_interval,
            "keepalive_interval": self.keepalive_interval,
            "retry_deadline": self.retry_deadline,
            "authority": self.authority,
        }
        for name, value in (("margin", self.margin), ("linger", self.linger)):
            if not (value >= 0 and math.isfinite(value)):
                raise TimingError(f"ha timing: {name} must be >= 0 seconds, found {value!r}")
        for name, value in positive.items():
            if not (value > 0 and math.isfinite(value)):
                raise TimingError(f"ha timing: {name} must be a positive number of seconds, found {value!r}")
        if self.miss_limit < 2:
            raise TimingError(f"ha timing: miss_limit must be at least 2, found {self.miss_limit}")
        if self.lease_ttl < 1:
            raise TimingError(f"ha timing: lease_ttl must be at least 1 second, found {self.lease_ttl}")
        need = self.keepalive_interval + 2 * self.retry_deadline
        if need > self.authority:
            raise TimingError(
                f"ha timing: keepalive_interval + 2*retry_deadline = {need:g}s must be <= authority "
                f"({self.authority:g}s): one failed keepalive would make the active let go"
            )
        if self.authority + self.margin > self.lease_ttl:
            raise TimingError(
                f"ha timing: authority + margin ({self.authority + self.margin:g}s) must be <= lease_ttl "
                f"({self.lease_ttl}s): "
                "the active must let go before its lease can expire and another node campaign"
            )
        if self.silence >= self.authority:
            raise TimingError(
                f"ha timing: heartbeat_interval*miss_limit = {self.silence:g}s must be < authority "
                f"({self.authority:g}s): a live active must hear its peer's acknowledgement in time"
            )
        return self
