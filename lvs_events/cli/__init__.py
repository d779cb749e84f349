"""The ``lvs-events`` command line: audit (tail), tables, operator actions, status."""
