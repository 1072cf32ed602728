"""Helpers for the tests and benchmarks, not for the pipeline: no module of the package imports them.

``loading`` reads whole inputs into memory, the reference the streaming path is tested against.
"""
