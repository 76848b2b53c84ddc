"""The login-node side of resnest-bench: CLI, sweeps, launchers, results store, tables.

Nothing here imports torch at start-up: the CLI must run on a login node without a GPU.
"""

__version__ = "0.1.0"
