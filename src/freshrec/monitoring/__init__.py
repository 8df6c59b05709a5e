"""Monitoring: drift and data-quality checks, on-call alerts, and their Prometheus metrics.

* :mod:`freshrec.monitoring.drift` — a reference window against a current window (the drift result);
* :mod:`freshrec.monitoring.alerts` — alert receivers, dedup and routing;
* :mod:`freshrec.monitoring.prometheus` — the Prometheus metrics of a check (textfile, Pushgateway).
"""
