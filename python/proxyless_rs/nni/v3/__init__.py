"""The NNI 3.0 adapter: ``layers``, ``lightning`` (the one-shot module), ``strategy``."""
