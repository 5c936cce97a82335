"""The NNI 2.10 adapter: ``layers``, ``lightning`` (the one-shot module), ``strategy``."""
