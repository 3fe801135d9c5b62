"""
Helpers for regcache's end-to-end tests against the kmock-based API emulator.

In pytest (see conftest.py for the fixtures)::

    with EmulatorServer() as server:               # a free loopback port, background thread
        server.write_kubeconfig(tmp_path / "kubeconfig")
        kube = server.client()                      # plain HTTP, as any client would talk
        kube.apply({"apiVersion": "regcache.io/v1alpha1", "kind": "ImageRepositoryWatch", ...})
        kube.wait_for(lambda: kube.get("irw", "default", "w")["status"], timeout=10)
        assert kube.counters()["writes"]["regcache.io/v1alpha1/imagerepositorywatches/status"] < 5

From another language (the Rust end-to-end tests), as a process::

    tests/emulator/.venv/bin/python tests/emulator/server.py serve --port-file PATH --kubeconfig PATH

It writes the port (atomically, once listening) and a kubeconfig, then serves until SIGTERM
or SIGINT (or, with --exit-on-stdin-eof, until its standard input closes). The admin API is
at http://127.0.0.1:PORT/_emulator/counters (GET), /_emulator/counters/reset (POST),
/_emulator/tokens (POST {"token": ..., "user": {...}}), /_emulator/config (PUT), /_emulator/state.
"""
from __future__ import annotations

import argparse
import asyncio
import atexit
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import requests
import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import kmock  # noqa: E402
from emulator import RESOURCES, RegcacheEmulator, split_resource  # noqa: E402

T = TypeVar("T")

# A fake token for the kubeconfig user: the emulator does not check it.
KUBECONFIG_TOKEN = "regcache-e2e-not-a-secret"


class EmulatorServer:
    """The emulator served by kmock's Server on a loopback port, in its own thread and loop."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self.emulator: RegcacheEmulator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> "EmulatorServer":
        self._thread = threading.Thread(target=self._run, name="kmock-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the emulator did not start in time")
        if self._error is not None:
            raise RuntimeError("the emulator failed to start") from self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as e:  # reported to start() if it happens before ready
            self._error = e
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self.emulator = RegcacheEmulator()
        async with self.emulator, kmock.Server(self.emulator, host=self.host, port=self.requested_port or None) as server:
            self.port = server.port
            self._ready.set()
            await self._stop.wait()
            await self.emulator.close_watches()
            await asyncio.sleep(0.05)  # let the watch streams finish

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)

    def __enter__(self) -> "EmulatorServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def kubeconfig(self, namespace: str = "default") -> dict[str, Any]:
        return make_kubeconfig(self.url, namespace)

    def write_kubeconfig(self, path: str | os.PathLike[str], namespace: str = "default") -> pathlib.Path:
        return write_kubeconfig(path, self.url, namespace)

    def client(self) -> "KubeClient":
        return KubeClient(self.url)


def make_kubeconfig(url: str, namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": url}}],
        "users": [{"name": "kmock", "user": {"token": KUBECONFIG_TOKEN}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": namespace}}],
        "current-context": "kmock",
        "preferences": {},
    }


def write_kubeconfig(path: str | os.PathLike[str], url: str, namespace: str = "default") -> pathlib.Path:
    path = pathlib.Path(path)
    _atomic_write(path, yaml.safe_dump(make_kubeconfig(url, namespace), sort_keys=False))
    os.chmod(path, 0o600)
    return path


def _atomic_write(path: pathlib.Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


# ----- a small Kubernetes client over plain HTTP ---------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        reason = body.get("reason") if isinstance(body, dict) else None
        super().__init__(f"HTTP {status} {reason or ''}: {body.get('message') if isinstance(body, dict) else body}")


def _resource_index() -> dict[str, tuple[str, str, str, bool]]:
    """kind, plural, singular, short names (lower-case) -> (group, version, plural, namespaced)."""
    index: dict[str, tuple[str, str, str, bool]] = {}
    for key, info in RESOURCES.items():
        group, version, plural = split_resource(key)
        value = (group, version, plural, bool(info["namespaced"]))
        names = [plural, info["singular"], info["kind"], *info["shortnames"], f"{plural}.{group}" if group else plural]
        for name in names:
            # Ambiguous names (Event in v1 and events.k8s.io) prefer the core API; use "events.events.k8s.io".
            index.setdefault(name.lower(), value)
        index[key.lower()] = value
    return index


_INDEX = _resource_index()


def resolve(kind: str) -> tuple[str, str, str, bool]:
    """'irw', 'ImageRepositoryWatch', 'imagerepositorywatches', 'coordination.k8s.io/v1/leases', ..."""
    try:
        return _INDEX[kind.lower()]
    except KeyError:
        raise KeyError(f"unknown resource {kind!r}; known: {sorted(set(_INDEX))}") from None


def _kind_of(obj: Mapping[str, Any]) -> str:
    av = obj.get("apiVersion", "v1")
    kind = obj["kind"]
    for key, info in RESOURCES.items():
        group, version, plural = split_resource(key)
        if info["kind"] == kind and av == (f"{group}/{version}" if group else version):
            return key
    raise KeyError(f"unknown apiVersion/kind {av}/{kind}")


class KubeClient:
    """Just enough of a Kubernetes client for tests, over plain HTTP with `requests`."""

    def __init__(self, url: str, field_manager: str = "emulator-client", timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.field_manager = field_manager
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {KUBECONFIG_TOKEN}"

    def path(self, kind: str, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        group, version, plural, namespaced = resolve(kind)
        base = f"/apis/{group}/{version}" if group else f"/api/{version}"
        if namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{plural}"
        if name:
            base += f"/{name}"
        if subresource:
            base += f"/{subresource}"
        return base

    def request(self, method: str, path: str, ok: Sequence[int] = (200, 201), **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self.timeout)
        response = self.session.request(method, self.url + path, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = response.text
        if response.status_code not in ok:
            raise ApiError(response.status_code, body)
        return body

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        ns = obj.get("metadata", {}).get("namespace")
        return self.request("POST", self.path(_kind_of(obj), ns), json=obj)

    def apply(self, obj: Mapping[str, Any], subresource: str | None = None, force: bool = True) -> dict[str, Any]:
        """Server-side apply (creates the object if missing); the status goes with subresource='status'."""
        meta = obj["metadata"]
        path = self.path(_kind_of(obj), meta.get("namespace"), meta["name"], subresource)
        params = {"fieldManager": self.field_manager, "force": "true" if force else "false"}
        return self.request("PATCH", path, params=params, data=yaml.safe_dump(dict(obj)),
                            headers={"Content-Type": "application/apply-patch+yaml"})

    def apply_status(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        return self.apply(obj, subresource="status")

    def get(self, kind: str, namespace: str | None, name: str, subresource: str | None = None) -> dict[str, Any] | None:
        """The object, or None if it does not exist."""
        try:
            return self.request("GET", self.path(kind, namespace, name, subresource))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str | None = None, label_selector: str | None = None) -> dict[str, Any]:
        params = {"labelSelector": label_selector} if label_selector else {}
        return self.request("GET", self.path(kind, namespace), params=params)

    def patch(self, kind: str, namespace: str | None, name: str, patch: Any, subresource: str | None = None,
              patch_type: str = "merge") -> dict[str, Any]:
        """patch_type: 'merge' (JSON merge patch), 'json' (JSON patch) or 'strategic'."""
        ctype = {"merge": "application/merge-patch+json", "json": "application/json-patch+json",
                 "strategic": "application/strategic-merge-patch+json"}[patch_type]
        return self.request("PATCH", self.path(kind, namespace, name, subresource), json=patch,
                            headers={"Content-Type": ctype})

    def replace(self, obj: Mapping[str, Any], subresource: str | None = None) -> dict[str, Any]:
        meta = obj["metadata"]
        return self.request("PUT", self.path(_kind_of(obj), meta.get("namespace"), meta["name"], subresource), json=obj)

    def delete(self, kind: str, namespace: str | None, name: str, missing_ok: bool = False) -> dict[str, Any] | None:
        try:
            return self.request("DELETE", self.path(kind, namespace, name))
        except ApiError as e:
            if missing_ok and e.status == 404:
                return None
            raise

    def counters(self) -> dict[str, Any]:
        return self.request("GET", "/_emulator/counters")

    def reset_counters(self) -> dict[str, Any]:
        return self.request("POST", "/_emulator/counters/reset")

    def add_token(self, token: str, username: str, groups: Sequence[str] = ()) -> None:
        self.request("POST", "/_emulator/tokens", json={"token": token, "user": {"username": username, "groups": list(groups)}})

    def configure(self, **settings: Any) -> dict[str, Any]:
        return self.request("PUT", "/_emulator/config", json=settings)

    def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
                 message: str | None = None) -> T:
        return wait_for(predicate, timeout, interval, message)


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, message: str | None = None) -> T:
    """Call predicate until it returns something truthy (which is returned); AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except (ApiError, requests.RequestException, KeyError, IndexError, TypeError) as e:
            last_error = e
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}{detail}")
        time.sleep(interval)


# ----- subprocesses with captured logs ---------------------------------------------------------

_LIVE: set["Proc"] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_LIVE):
        proc.stop(timeout=2.0)


class Proc:
    """
    A subprocess with stdout+stderr captured to a log file, stopped (SIGTERM, then SIGKILL)
    on stop(), on leaving a `with` block, or at interpreter exit.
    """

    def __init__(self, args: Sequence[str | os.PathLike[str]], log_path: str | os.PathLike[str],
                 env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None) -> None:
        self.args = [str(a) for a in args]
        self.log_path = pathlib.Path(log_path)
        self.env = dict(os.environ, **(env or {}))
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> "Proc":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.popen = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          env=self.env, cwd=self.cwd, start_new_session=True)
        finally:
            log.close()
        _LIVE.add(self)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        regex = re.compile(pattern)

        def found() -> re.Match[str] | None:
            match = regex.search(self.log())
            if match is None and not self.alive():
                raise AssertionError(f"{self.args[0]} exited ({self.popen.returncode if self.popen else None}) "
                                     f"before logging {pattern!r}:\n{self.log()[-4000:]}")
            return match
        return wait_for(found, timeout, 0.05, f"{pattern!r} in {self.log_path}")

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after timeout; returns the exit code."""
        _LIVE.discard(self)
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)  # its own session: the whole process group
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait()
        return self.popen.returncode

    def __enter__(self) -> "Proc":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# ----- CLI: serve the emulator for tests written in other languages ------------------------------


def _serve_main(args: argparse.Namespace) -> int:
    server = EmulatorServer(port=args.port, host=args.host).start()
    done = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        done.set()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    if args.exit_on_stdin_eof:
        def watch_stdin() -> None:
            try:
                while sys.stdin.buffer.read(4096):
                    pass
            except (OSError, ValueError):
                pass
            done.set()
        threading.Thread(target=watch_stdin, daemon=True).start()

    try:
        if args.kubeconfig:
            server.write_kubeconfig(args.kubeconfig, args.namespace)
        if args.port_file:  # written last: once it exists, the kubeconfig does too
            _atomic_write(pathlib.Path(args.port_file), f"{server.port}\n")
        print(f"kmock emulator serving on {server.url}", flush=True)
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
    print("kmock emulator stopped", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="server.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the Kubernetes API emulator until SIGTERM")
    serve.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port-file", help="write the chosen port here (atomically, once listening)")
    serve.add_argument("--kubeconfig", help="write a kubeconfig pointing at the emulator here")
    serve.add_argument("--namespace", default="default", help="the kubeconfig context's namespace")
    serve.add_argument("--exit-on-stdin-eof", action="store_true",
                       help="also stop when standard input closes (so a crashed parent leaves no server behind)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve_main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
