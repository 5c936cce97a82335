"""The NNI adapters: ``v2`` for NNI 2.10, ``v3`` for NNI 3.0, each the layers (subclasses of that
NNI's differentiable mixed layers), the one-shot Lightning module and the strategy; ``version``
says which NNI is installed. The public modules ``proxyless_rs.supermodule``, ``.lightning`` and
``.strategy`` pick the adapter."""
