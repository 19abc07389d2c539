"""The Numenta Anomaly Benchmark: our scorer (``score``), detectors adapted to NAB's
series (``detect``) and the benchmark itself (``python -m bench.nab.run``)."""
