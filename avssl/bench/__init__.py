"""The benchmark harness: ``python -m avssl.bench --task NAME``.

Tasks (``avssl.bench.tasks``) are small declarative specs; protocols (``avssl.bench.protocols``)
are functions on cached features (``avssl.bench.features``); every run appends one row of
``avssl.bench.results`` to ``leaderboard/<task>.csv``.
"""
