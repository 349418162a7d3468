"""Reproductions of the papers' tables and figures, peers and benchmarks."""

from common.quiet import configure_for_entry_point as _configure_for_entry_point

_configure_for_entry_point()
