"""FedPM command line and local orchestration (the demo, a local broker, sensor simulators).

This package launches the roles (``edge_agent``, ``aggregator``, ``serving``) as processes; it
is tooling around them, not a role itself.
"""

__version__ = "0.1.0"
