"""serve_app/app.py's start-up warnings, which an operator reads on the console of
`make serve` (serve_app/run.py prints them) and in the controller's log."""

from __future__ import annotations

from serve_app.app import FAST_INGRESS_ENV, haproxy_ports_warning


def test_the_haproxy_ports_warning_names_both_ports_and_the_fix():
    assert haproxy_ports_warning(FAST_INGRESS_ENV) == (
        "HAProxy ingress: its stats page (port 8404) and Prometheus metrics (port 9101) listen on all"
        " interfaces without authentication (Ray 2.60 offers no bind address for them); block both"
        ' ports from outside this host with a firewall (docs/operations.md, "HAProxy\'s ports")'
    )


def test_the_haproxy_ports_warning_follows_the_ports_set_and_is_absent_without_haproxy():
    ports = {"RAY_SERVE_HAPROXY_STATS_PORT": "18404", "RAY_SERVE_HAPROXY_METRICS_PORT": "19101"}
    warning = haproxy_ports_warning({**FAST_INGRESS_ENV, **ports})
    assert warning is not None and "(port 18404)" in warning and "(port 19101)" in warning
    assert haproxy_ports_warning({}) is None  # Ray Serve's own proxy: nothing listens there
