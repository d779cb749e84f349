"""The drill lab moved into the package (``agent.ha.lab``, used by ``lvs-events drill --lab``);
re-exported here for the tests and the bench."""

from agent.ha.lab import ADDR, CLUSTER, FAST_TIMING, VIP, NetnsLab, lab_config, netns_available

__all__ = ["ADDR", "CLUSTER", "FAST_TIMING", "VIP", "NetnsLab", "lab_config", "netns_available"]
