"""Subcommands of ``fedpm`` for data scientists and reliability engineers.

Each module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``;
heavy imports (torch, scipy, matplotlib) happen inside ``run`` so ``fedpm --help`` stays fast.
"""
