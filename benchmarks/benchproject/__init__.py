"""The Django project of the benchmarks: one app, ``bench``, with one bound model, ``Tick``."""
