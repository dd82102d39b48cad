"""Benchmarks and load tests of the ecard gateway (``make bench``, ``make loadtest``).

- ``frames``: fast frame builders and reply parsing shared by the clients.
- ``loadgen``: the load generator (closed loop, paced, reconnect storm), in its own processes.
- ``ceiling``: a bare server that answers every frame with a constant reply (the upper bound).
- ``baseline``: the usual design, one PostgreSQL transaction per tap (the lower bound).
- ``bench``: runs all of them in one go and prints the comparison.
- ``locustfile`` / ``locust_run``: the same protocol under locust.
"""
