"""The parts of ``experiments.compare_real``: the trained-peer cache (``peer_cache``),
our model (``ours``) and the report's tables and notes (``report``).

Run a comparison with ``python -m experiments.compare_real``; ``compare_real``
re-exports the public names of these modules.
"""
