"""Test support the suites and the benchmarks share; never shipped in a service image.

- :mod:`testkit.env`: this run's isolated slice of the real PostgreSQL, Redis and Kafka.
- :mod:`testkit.broadcaster`: a broadcaster served in-process, players, frames and watchers.
"""
