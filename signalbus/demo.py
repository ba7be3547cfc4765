"""``signalbus demo``: the example project and a worker, on the embedded 0MQ broker.

Two child processes, each stopped by its PID: the example's web app (Django's
``runserver``; a demo needs no production server) and ``signalbus worker``.
Each runs in a session of its own, so a Ctrl-C in the terminal reaches this
process alone and the children are stopped in one known way (SIGTERM, then
SIGKILL after a grace period). Their output goes to log files beside the
SQLite database, so the terminal shows one block with the URL to open, and a
child that fails is reported in one line quoting the last line of its log.

This module is imported by the command-line parser for every command: it
imports the standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from .errors import SignalbusError

__all__ = ["add_arguments", "main"]

START_TIMEOUT = 60.0  # seconds for both children to answer; a cold first run imports a lot
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
EVENTS_PATH = "/events?topic=items.item.%23"  # what the example page listens to
LOG_TAIL_BYTES = 4096


class DemoError(SignalbusError):
    """Something that stops the demo, told to the user in one line."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``signalbus demo``: where to listen; everything else has a default."""
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the web app and the worker listen on (default: 127.0.0.1)",
    )
    parser.add_argument(
        "--port", type=_port, default=8000, help="port of the example web app (default: 8000)"
    )
    parser.add_argument(
        "--worker-port",
        type=_port,
        default=8001,
        help="port of the worker's SSE endpoint, /events (default: 8001)",
    )
    parser.add_argument(
        "--broker-port",
        type=_port,
        default=5560,
        help="port of the embedded 0MQ broker the worker binds (default: 5560)",
    )


def main(args: argparse.Namespace) -> int:
    """Run the demo until Ctrl-C or SIGTERM (exit 0); any failure is one line and exit 1."""
    with _stop_signals() as stop:
        try:
            return _run(args, stop)
        except DemoError as exc:
            print(f"signalbus: error: {exc}", file=sys.stderr, flush=True)
            return 1


@dataclass(frozen=True)
class _Plan:
    """Where everything listens, and the addresses to reach it from this machine."""

    host: str
    port: int
    worker_port: int
    broker_port: int

    @property
    def local(self) -> str:
        """The address to connect to: a wildcard listener is reached on loopback."""
        return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)

    def url(self, port: int, path: str = "/") -> str:
        host = f"[{self.local}]" if ":" in self.local else self.local
        return f"http://{host}:{port}{path}"

    @property
    def broker_url(self) -> str:
        # Both children run on this machine, so the broker stays on loopback whatever
        # --host says: nobody else can publish into the demo (and 0MQ needs an option
        # for IPv6 that the adapter does not set).
        return f"zmq://127.0.0.1:{self.broker_port}"


@dataclass
class _Child:
    """One child process and the log file that holds its output."""

    name: str
    port: int
    probe: str  # a path that answers 200 once the child is ready
    process: subprocess.Popen[bytes]
    log: Path

    def failure(self, when: str) -> str:
        code = self.process.returncode
        status = f"killed by {_signal_name(-code)}" if code < 0 else f"exit status {code}"
        reason = _last_line(self.log).removeprefix("signalbus: error: ")
        return f"{self.name} stopped {when} ({status}): {reason}; log: {self.log}"


def _run(args: argparse.Namespace, stop: threading.Event) -> int:
    plan = _Plan(args.host, args.port, args.worker_port, args.broker_port)
    _check_ports(plan)
    example = _find_example()
    data = _data_dir()
    env = _child_env(plan, example, data)
    _migrate(example, env)
    if stop.is_set():
        return 0
    children: list[_Child] = []
    try:
        children.append(_start_web(plan, example, env, data))
        children.append(_start_worker(plan, example, env, data))
        if not _wait_until_ready(plan, children, stop):
            return 0
        _print_banner(plan, data)
        failed = _supervise(children, stop)
        if failed is not None:
            raise DemoError(failed.failure("unexpectedly") + "; the demo stops")
        return 0
    finally:
        _stop_children(children)


# -- start-up ----------------------------------------------------------------------------


def _port(text: str) -> int:
    """An argparse type: a TCP port number."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (1 to 65535)")
    return port


def _check_ports(plan: _Plan) -> None:
    """Fail before starting anything when a port is taken: a clearer message than a
    child's traceback, and nothing to clean up."""
    wanted = {
        "--port": plan.port,
        "--worker-port": plan.worker_port,
        "--broker-port": plan.broker_port,
    }
    if len(set(wanted.values())) < len(wanted):
        raise DemoError("--port, --worker-port and --broker-port must be three different ports")
    for option, port in wanted.items():
        host = "127.0.0.1" if option == "--broker-port" else plan.host
        _ensure_free(host, port, option)


def _ensure_free(host: str, port: int, option: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As the servers themselves do: a port left in TIME_WAIT by a previous run is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise DemoError(f"port {port} is in use; pass {option}") from None
            raise DemoError(
                f"cannot listen on {host}:{port} ({exc.strerror}); pass --host"
            ) from None


def _find_example() -> Path:
    """The example project: inside the package in a wheel (pyproject force-includes it),
    beside the package in a source checkout."""
    package = Path(__file__).resolve().parent
    candidates = (package / "example", package.parent / "example")
    for candidate in candidates:
        if (candidate / "manage.py").is_file():
            return candidate
    looked = " or ".join(str(c) for c in candidates)
    raise DemoError(f"the example project is missing (looked in {looked}); reinstall signalbus")


def _data_dir() -> Path:
    """Where the SQLite file and the logs go: writable, and never inside the package."""
    raw = os.environ.get("SIGNALBUS_DEMO_DIR")
    path = Path(raw) if raw else Path(tempfile.gettempdir()) / "signalbus-demo"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DemoError(
            f"cannot create the data directory {path} ({exc.strerror}); set SIGNALBUS_DEMO_DIR"
        ) from None
    return path


def _child_env(plan: _Plan, example: Path, data: Path) -> dict[str, str]:
    """The children's environment: the example importable, and every address they share."""
    env = dict(os.environ)
    paths = [str(example)]
    if example.parent == Path(__file__).resolve().parent.parent:
        paths.append(str(example.parent))  # a source checkout: the same signalbus as ours
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env.update(
        PYTHONPATH=os.pathsep.join(paths),
        PYTHONUNBUFFERED="1",  # logs reach their files as things happen
        DJANGO_SETTINGS_MODULE="demoproj.settings",  # not whatever the caller had set
        SIGNALBUS_BROKER_URL=plan.broker_url,
        SIGNALBUS_DEMO_DIR=str(data),
        SIGNALBUS_DEMO_ORIGIN=plan.url(plan.port, ""),
        SIGNALBUS_DEMO_EVENTS_URL=plan.url(plan.worker_port, EVENTS_PATH),
    )
    return env


def _migrate(example: Path, env: dict[str, str]) -> None:
    command = [sys.executable, "manage.py", "migrate", "--noinput", "--verbosity", "0"]
    try:
        # A session of its own, as for the children: a Ctrl-C now lets it finish, then stops.
        done = subprocess.run(
            command,
            cwd=example,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            start_new_session=True,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DemoError(f"cannot migrate the example project: {exc}") from None
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"exit status {done.returncode}"
        raise DemoError(f"migrating the example project failed: {reason}")


def _start_web(plan: _Plan, example: Path, env: dict[str, str], data: Path) -> _Child:
    address = f"[{plan.host}]:{plan.port}" if ":" in plan.host else f"{plan.host}:{plan.port}"
    command = [sys.executable, "manage.py", "runserver", address, "--noreload"]
    process = _spawn("the web app", command, example, env, data / "web.log")
    return _Child("the web app", plan.port, "/items.json", process, data / "web.log")


def _start_worker(plan: _Plan, example: Path, env: dict[str, str], data: Path) -> _Child:
    command = [sys.executable, "-m", "signalbus", "worker", "--settings", "demoproj.settings"]
    command += ["--host", plan.host, "--port", str(plan.worker_port)]
    # /readyz answers 200 once the worker's broker endpoint is bound, not merely its port.
    process = _spawn("the worker", command, example, env, data / "worker.log")
    return _Child("the worker", plan.worker_port, "/readyz", process, data / "worker.log")


def _spawn(
    name: str, command: Sequence[str], cwd: Path, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    try:
        with log.open("wb") as out:
            process = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # our Ctrl-C is ours: we stop the child ourselves
            )
    except OSError as exc:
        raise DemoError(f"cannot start {name}: {exc}") from None
    return process


def _wait_until_ready(plan: _Plan, children: Sequence[_Child], stop: threading.Event) -> bool:
    """True once every child answers; False when asked to stop first."""
    deadline = time.monotonic() + START_TIMEOUT
    waiting = list(children)
    while waiting:
        for child in list(waiting):
            if child.process.poll() is not None:
                raise DemoError(child.failure("during start-up"))
            if _answers(plan.local, child):
                waiting.remove(child)
        if not waiting:
            break
        if time.monotonic() > deadline:
            child = waiting[0]
            raise DemoError(
                f"{child.name} did not answer on port {child.port} within {START_TIMEOUT:.0f} s; "
                f"log: {child.log}"
            )
        if stop.wait(0.1):
            return False
    return not stop.is_set()


def _answers(host: str, child: _Child) -> bool:
    """Whether the child answers its probe with a 200."""
    connection = http.client.HTTPConnection(host, child.port, timeout=2)
    try:
        connection.request("GET", child.probe)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def _print_banner(plan: _Plan, data: Path) -> None:
    web, events = plan.url(plan.port), plan.url(plan.worker_port, EVENTS_PATH)
    print(
        "\n".join(
            [
                "",
                "signalbus demo is running.",
                "",
                f"  open {web} in two tabs: a change made in one appears in the other at once",
                "",
                f"  events   {events}",
                f"           (watch the raw stream: curl -N '{events}')",
                f"  broker   {plan.broker_url}",
                f"  data     {data} (SQLite; logs web.log and worker.log)",
                "",
                "Ctrl-C stops the web app and the worker.",
                "",
            ]
        ),
        flush=True,
    )


# -- running and stopping ------------------------------------------------------------------


def _supervise(children: Sequence[_Child], stop: threading.Event) -> _Child | None:
    """Wait for a stop request (None) or for a child to die (that child)."""
    while not stop.wait(0.5):
        for child in children:
            if child.process.poll() is not None:
                return child
    return None


def _stop_children(children: Sequence[_Child]) -> None:
    """SIGTERM each child by PID, SIGKILL what is still there after the grace period."""
    for child in children:
        if child.process.poll() is None:
            child.process.terminate()
    deadline = time.monotonic() + STOP_GRACE
    for child in children:
        try:
            child.process.wait(max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()


@contextlib.contextmanager
def _stop_signals() -> Iterator[threading.Event]:
    """An event set by Ctrl-C, SIGTERM or SIGHUP (terminal closed), so that every wait can
    end in an orderly stop instead of an exception raised wherever the signal lands."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    names = ("SIGINT", "SIGTERM", "SIGHUP")
    signals = [getattr(signal, name) for name in names if hasattr(signal, name)]
    previous = {sig: signal.signal(sig, on_signal) for sig in signals}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _last_line(log: Path) -> str:
    """The last non-blank line of a log: usually the one-line error that ended the child."""
    try:
        with log.open("rb") as file:
            file.seek(max(log.stat().st_size - LOG_TAIL_BYTES, 0))
            text = file.read().decode("utf-8", "replace")
    except OSError:
        return "no log"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"
