"""Building blocks of ray-zerocopy's benchmark: models, load methods, probes, reports.

``benchmarks/run.py`` (the suite, ``nox -s bench``) and ``benchmarks/demo.py`` (its short
version, ``nox -s demo``) are thin command lines over these modules.
"""
