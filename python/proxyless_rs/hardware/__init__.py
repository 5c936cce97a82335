"""Hardware-aware search, one module per job: ``tables`` (cost tables), ``counting`` (costs counted or
measured from the real modules), ``loss`` (what costs add to the architecture loss; latency as a
cost), ``export`` (predicted costs, the k best, the constrained export). Public as
``proxyless_rs.latency`` and ``proxyless_rs.costs``."""
