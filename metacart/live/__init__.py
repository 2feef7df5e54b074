"""The simulated shops live against Kafka: closed loops around the workers, scored against the truth.

:mod:`metacart.live.ads` plays the market (ad requests, clicks, purchases); :mod:`metacart.live.retention`
plays the retention world (sessions, purchases, outcomes). They produce traffic and read decisions like a
shop would; they are not part of the serving package (``streams`` holds the worker only), and the demo,
``metacart simulate``, the benchmarks and the integration tests import them from here.
"""
