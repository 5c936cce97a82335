"""Hardware-aware search: ``latency`` (latency tables, profiling, the expected-latency loss) and
``costs`` (several costs, counting from the real modules, the cost loss with weights or hard
limits, the exact constrained export). Public as ``proxyless_rs.latency`` and
``proxyless_rs.costs``."""
