"""lvs-events: an event-sourced coordinator for a pair of LVS (IPVS) directors."""

__version__ = "0.1.0"
