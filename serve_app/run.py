"""``python -m serve_app run models.yaml``: Ray's ``serve run``, stopped without cutting streams.

``make serve`` runs this. Ray's ``serve run`` answers Ctrl-C with ``serve.shutdown()``, which
takes the HTTP ingress down with the replicas: every stream in flight was cut with no error event
and no ``data: [DONE]``, and a terminal's Ctrl-C reached every Ray process of the group at once.
HAProxy (the ingress ``make serve`` turns on) was left running after a SIGTERM.

Here ``serve run`` runs in a session of its own, so a terminal's signal reaches only this
process, which then stops the fleet in order:

1. every model application is deleted (``serve.delete``): Serve stops routing to its replicas
   and lets each finish the requests it has, up to the model's ``drain_timeout_s`` (its
   ``graceful_shutdown_timeout_s``); the router and the ingress stay up meanwhile, so streams
   finish, and a stream still open at the timeout ends with an SSE error event and ``[DONE]``
   (the router's relay). New requests for a model being deleted get an error answer, not a
   replica;
2. ``serve run`` gets SIGINT and shuts the rest down (``serve.shutdown()``);
3. whatever of its session is still alive after ``SHUTDOWN_WAIT_S`` (HAProxy among them) is
   ended: SIGTERM, then SIGKILL.

A second SIGINT or SIGTERM skips the drain. Exit status: ``serve run``'s, or 1 when the fleet
did not drain in time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

SHUTDOWN_WAIT_S = 60.0  # serve.shutdown() after the drain: the router and the controller
KILL_WAIT_S = 5.0
DRAIN_MARGIN_S = 15.0  # beyond the longest drain_timeout_s: Serve's own stop and our polling


def run(registry_path: Path, serve_args: list[str] | None = None) -> int:
    """Serve ``registry_path`` with ``serve run`` until it exits or a signal asks us to stop.

    Raises RegistryError (from the loader) before starting anything when the file is invalid."""
    from serve_app.registry.loader import load_registry

    registry = load_registry(registry_path)
    streams_s = max((m.drain_timeout_s for m in registry.models), default=0.0)
    drain_s = streams_s + DRAIN_MARGIN_S
    model_apps = model_application_names(registry_path)
    from serve_app.app import haproxy_ports_warning

    # The builder logs it in the controller's log only; an operator watches this console.
    warning = haproxy_ports_warning(os.environ)
    if warning is not None:
        print(f"serve_app run: warning: {warning}", flush=True)
    command = [sys.executable, "-m", "ray.serve.scripts", "run", str(registry_path), *(serve_args or [])]
    child = subprocess.Popen(command, start_new_session=True, preexec_fn=_default_signals)
    stop = threading.Event()
    names = [m.name for m in registry.models]
    threading.Thread(
        target=announce_ready, args=(ready_url(registry_path), names, child, stop), daemon=True
    ).start()
    force = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        (force if stop.is_set() else stop).set()
        name = signal.Signals(signum).name
        print(f"serve_app run: {name}: " + ("stopping now" if force.is_set() else "draining"), flush=True)

    def our_handlers() -> None:
        # ray.init (in drain) installs its own SIGTERM handler, a plain sys.exit: ours again.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    our_handlers()
    drained = False
    try:
        while child.poll() is None and not stop.is_set():
            time.sleep(0.2)
        if child.poll() is not None:  # serve run ended by itself (a failed deploy, say)
            return child.returncode
        if force.is_set():
            print("serve_app run: not draining (second signal)", flush=True)
        else:
            address = cluster_address(child.pid)
            drained = drain(model_apps, drain_s, force, address, our_handlers, streams_s=streams_s)
        return 0 if drained else 1
    finally:  # whatever happened above (even a SystemExit), serve run and its session end here
        _interrupt(child)
        try:
            child.wait(timeout=SHUTDOWN_WAIT_S)
        except subprocess.TimeoutExpired:
            print(f"serve_app run: serve run still running after {SHUTDOWN_WAIT_S:g} s", flush=True)
        end_session(child.pid)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


READY_POLL_S = 1.0


def ready_url(registry_path: Path) -> str:
    """The router's /readyz from the config file's ``http_options`` (Ray's defaults otherwise:
    127.0.0.1:8000); a wildcard host is asked on the loopback address."""
    import yaml

    document = yaml.safe_load(Path(registry_path).read_text()) or {}
    options = document.get("http_options") or {}
    host = str(options.get("host") or "127.0.0.1")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"http://{host}:{int(options.get('port') or 8000)}/readyz"


def announce_ready(url: str, models: list[str], child: subprocess.Popen, stop: threading.Event) -> None:
    """Print one line once ``url`` answers 200, so whoever ran ``make serve`` knows when to send
    requests (``serve run``'s last line, "Submitted deploy config successfully", comes long before
    the models are up). Gives up when ``serve run`` ends or a signal arrives."""
    import urllib.error
    import urllib.request

    base = url.removesuffix("/readyz")
    while child.poll() is None and not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    served = ready_summary(response.read(), models)
                    print(f"serve_app run: ready: {base}/v1 {served}", flush=True)
                    return
        except urllib.error.HTTPError as error:
            if error.code == 401:
                print(f"serve_app run: up at {base}/v1 (its /readyz needs an API key)", flush=True)
                return
        except (OSError, ValueError):
            pass  # not listening yet
        stop.wait(READY_POLL_S)


def ready_summary(body: bytes, models: list[str]) -> str:
    """What a 200 from /readyz says is served: its available models (router/health.py
    ``fleet_readiness``), and the others with why; ``models`` (the file's) when it cannot be read."""
    import json

    try:
        states = json.loads(body)["models"]
        serving = [name for name, state in states.items() if state.get("available")]
        left_out = [
            f"{name} ({_first_line(state.get('reason'))})"
            for name, state in states.items()
            if name not in serving
        ]
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"serves {', '.join(models)}"
    return f"serves {', '.join(serving)}" + (f"; not serving {', '.join(left_out)}" if left_out else "")


def _first_line(reason: object, limit: int = 120) -> str:
    lines = str(reason or "unavailable").splitlines() or ["unavailable"]
    return lines[0][:limit]


def model_application_names(registry_path: Path) -> list[str]:
    """The names of the model applications in a Serve config file (registry/layout.py)."""
    import yaml

    from serve_app.registry.layout import MODEL_IMPORT_PATH

    document = yaml.safe_load(Path(registry_path).read_text()) or {}
    return [
        app["name"]
        for app in document.get("applications") or []
        if isinstance(app, dict) and app.get("import_path") == MODEL_IMPORT_PATH
    ]


def cluster_address(session_id: int) -> str | None:
    """The GCS address (``ip:port``) of the Ray cluster that ``serve run`` started in session
    ``session_id``, or None. Not ``address="auto"``: with other clusters on the machine (tests,
    other users) that may find another one. The GCS process of this session names its session
    folder and node IP on its command line, and Ray writes the port it bound into that folder
    (``gcs_server_port_<node id>``).

    Also takes the cluster's authentication settings from the GCS process's environment into
    this one: Ray 2.60 turns token authentication on for a new local cluster
    (``RAY_AUTH_MODE=token``, set in ``serve run``'s environment only), and a driver connecting
    by address needs the same mode to send the token."""
    for pid in session_pids(session_id):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith("gcs_server"):
            continue
        flags = dict(arg[2:].split("=", 1) for arg in argv[1:] if arg.startswith("--") and "=" in arg)
        folder, ip = flags.get("session-dir"), flags.get("node-ip-address")
        ports = sorted(Path(folder).glob("gcs_server_port_*")) if folder else []
        if ip and ports:
            port = ports[0].read_text().strip()
            if port.isdigit():
                _adopt_auth_settings(pid)
                return f"{ip}:{port}"
    return None


AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def _adopt_auth_settings(pid: int) -> None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
        return
    found = dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)
    for name in AUTH_ENV:
        if name in found:
            os.environ[name] = found[name]


def drain(
    apps: list[str],
    timeout_s: float,
    force: threading.Event,
    address: str | None,
    after_connect: Callable[[], None] = lambda: None,
    streams_s: float | None = None,
) -> bool:
    """Delete the model applications (their replicas drain) and wait until Serve has removed them.

    ``streams_s``: the longest ``drain_timeout_s``, how long streams in flight may run on before
    Ray Serve ends them (its ``graceful_shutdown_timeout_s``, then the replica is killed).

    Connects to ``serve run``'s cluster at ``address`` (``cluster_address``); ``after_connect``
    runs once connected (the runner puts its signal handlers back). The applications drained
    are every model application deployed now - ``apps`` from the file, and any added since
    with ``serve deploy`` (those with a ModelServer deployment). True when all were gone within
    ``timeout_s``, and before ``streams_s``; False when they went only after ``streams_s`` (Ray
    Serve ended the streams still open then), on a timeout, a second signal, or when the cluster
    cannot be reached (then ``serve run``'s own shutdown is all there is)."""
    if address is None:
        print("serve_app run: could not find serve run's Ray cluster; no drain", flush=True)
        return False
    try:
        import ray
        from ray import serve

        ray.init(address=address, log_to_driver=False, logging_level="error")
        after_connect()
        from serve_app.registry.layout import MODEL_DEPLOYMENT

        running = serve.status().applications
        deployed = [name for name, app in running.items() if MODEL_DEPLOYMENT in app.deployments]
        targets = sorted({app for app in apps if app in running} | set(deployed))
        names = ", ".join(targets) or "no model"
        limit = f"for up to {streams_s:g} s (drain_timeout_s), " if streams_s is not None else ""
        print(
            f"serve_app run: draining {names}: streams in flight may finish {limit}then they are "
            f"ended; giving up after {timeout_s:g} s (Ctrl-C again to stop now)",
            flush=True,
        )
        started = time.monotonic()
        for app in targets:
            serve.delete(app, _blocking=False)
        deadline = started + timeout_s
        while time.monotonic() < deadline and not force.is_set():
            left = set(targets) & set(serve.status().applications)
            if not left:
                took = time.monotonic() - started
                if streams_s is not None and took >= streams_s:
                    print(
                        f"serve_app run: models stopped after {took:.0f} s: streams still open at "
                        f"drain_timeout_s ({streams_s:g} s) were ended",
                        flush=True,
                    )
                    return False
                print("serve_app run: models drained", flush=True)
                return True
            time.sleep(0.5)
        what = "drain cut short (second signal)" if force.is_set() else "the models did not drain in time"
        print(f"serve_app run: {what}", flush=True)
        return False
    except Exception as error:  # the cluster is already gone, or not reachable from here
        print(f"serve_app run: could not drain ({type(error).__name__}: {error})", flush=True)
        return False
    finally:
        _disconnect()


def _disconnect() -> None:
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()  # this driver only: the cluster is serve run's
    except Exception:  # nothing to disconnect from
        pass


def end_session(session_id: int) -> list[int]:
    """End every process still in session ``session_id`` (Linux ``/proc``): SIGTERM, then
    SIGKILL after KILL_WAIT_S. Returns the pids that were still alive at first."""
    alive = session_pids(session_id)
    for pid in alive:
        _kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_WAIT_S
    while time.monotonic() < deadline and session_pids(session_id):
        time.sleep(0.2)
    for pid in session_pids(session_id):
        _kill(pid, signal.SIGKILL)
    if alive:
        print(f"serve_app run: ended {len(alive)} leftover process(es) of serve run's session", flush=True)
    return alive


def session_pids(session_id: int) -> list[int]:
    """Pids in session ``session_id``, from ``/proc`` (this process excluded)."""
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if os.getsid(int(entry.name)) == session_id:
                found.append(int(entry.name))
        except (ProcessLookupError, PermissionError):
            continue
    return found


def _kill(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _interrupt(child: subprocess.Popen) -> None:
    if child.poll() is None:
        _kill(child.pid, signal.SIGINT)


def _default_signals() -> None:
    # A shell without job control starts background jobs with SIGINT ignored, and an ignored
    # signal stays ignored across exec: serve run must see the SIGINT this process forwards.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
