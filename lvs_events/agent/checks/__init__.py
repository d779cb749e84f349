"""Health checks: every ldirectord check type as asyncio probes, and the scheduler that runs them.

The agent constructs one :class:`Checker` per node and hands it to :class:`lvs_events.agent.runtime.Agent`
(``checker=Checker(settings.node)``); it implements :class:`lvs_events.agent.health.HealthChecker`.
See ``docs/health-checks.md``.
"""

from lvs_events.agent.checks.base import Down, Result
from lvs_events.agent.checks.scheduler import Checker, CheckerStats
from lvs_events.agent.checks.spec import CheckSpec, spec_for, specs_from_config

__all__ = ["CheckSpec", "Checker", "CheckerStats", "Down", "Result", "spec_for", "specs_from_config"]
