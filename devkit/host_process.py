"""Start the local Functions host as a child process and talk to it: what the tests and the demo use.

Each host runs in its own process with its own environment, as a real worker would. Its settings go to a
local.settings.json-style file in ``work_dir``; its log (stderr) to ``work_dir/host.log``; its keys to
``work_dir/keys.json``. ``start`` returns once the host has printed its listening line and answers
``/admin/host/status``; ``stop`` sends SIGTERM and kills the process group if the host does not exit in time.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import requests

from devkit.host import KEYS_FILE_LINE, LISTENING_LINE

REPO_ROOT = Path(__file__).resolve().parent.parent
KEY_HEADER = "x-functions-key"


def loopback_session() -> requests.Session:
    """A session for talking to local servers: no proxies, netrc or CA bundles from the environment."""
    session = requests.Session()
    session.trust_env = False
    return session


class HostStartError(RuntimeError):
    """The host exited or did not become ready; the message ends with the tail of its log."""


class HostProcess:
    def __init__(
        self,
        app: Path,
        *,
        work_dir: Path,
        settings: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        host_json: Path | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.app = app
        self.work_dir = work_dir
        self._settings = dict(settings or {})
        self._env = dict(env) if env is not None else dict(os.environ)
        self._host_json = host_json
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None
        self.base_url = ""
        self.function_key = ""
        self.master_key = ""
        self.returncode: int | None = None

    @property
    def log_path(self) -> Path:
        return self.work_dir / "host.log"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> HostProcess:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        settings_file = self.work_dir / "local.settings.json"
        settings_file.write_text(json.dumps({"IsEncrypted": False, "Values": self._settings}, indent=2))
        command = [
            sys.executable,
            "-m",
            "devkit",
            "host",
            "--app",
            str(self.app),
            "--port",
            "0",
            "--settings",
            str(settings_file),
            "--keys-file",
            str(self.work_dir / "keys.json"),
        ]
        if self._host_json is not None:
            command += ["--host-json", str(self._host_json)]
        self._log = self.log_path.open("w", encoding="utf-8")
        self._process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env={**self._env, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            start_new_session=True,  # its own process group, so a kill reaches anything it started
        )
        self._reader = threading.Thread(target=self._read_stdout, name="host-stdout", daemon=True)
        self._reader.start()
        try:
            self._wait_until_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def url(self, path: str) -> str:
        return self.base_url + path

    def status(self) -> dict[str, Any]:
        with loopback_session() as session:
            response = session.get(
                self.url("/admin/host/status"), headers={KEY_HEADER: self.master_key}, timeout=10
            )
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def fire(self, function_name: str, input_text: str = "") -> None:
        """Run a non-HTTP function now via the admin API, as POST /admin/functions/{name} does in Azure."""
        with loopback_session() as session:
            response = session.post(
                self.url(f"/admin/functions/{function_name}"),
                json={"input": input_text},
                headers={KEY_HEADER: self.master_key},
                timeout=10,
            )
        if response.status_code != 202:
            raise RuntimeError(f"firing {function_name} answered {response.status_code}: {response.text}")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait for a clean exit, else kill the process group. Returns the exit code."""
        process = self._process
        if process is None:
            return self.returncode
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._kill_group(process)
        self._finish(process)
        return self.returncode

    def kill(self) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            self._kill_group(process)
        self._finish(process)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> HostProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self._startup_timeout
        keys_file: Path | None = None
        while not self.base_url:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HostStartError(self._explain("did not print its listening line in time"))
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise HostStartError(self._explain("exited during start-up"))
            if line.startswith(KEYS_FILE_LINE):
                keys_file = Path(line.removeprefix(KEYS_FILE_LINE).strip())
            elif line.startswith(LISTENING_LINE):
                self.base_url = line.removeprefix(LISTENING_LINE).strip()
        if keys_file is None:
            raise HostStartError(self._explain("did not say where its keys are"))
        keys = json.loads(keys_file.read_text(encoding="utf-8"))
        self.function_key, self.master_key = keys["functionKey"], keys["masterKey"]
        while True:
            try:
                if self.status().get("state") == "Running":
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise HostStartError(self._explain("did not report Running in time"))
            time.sleep(0.05)

    def _read_stdout(self) -> None:
        process = self._process
        assert process is not None
        assert process.stdout is not None
        for line in process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _explain(self, what: str) -> str:
        tail = "\n".join(self.log_text().splitlines()[-30:])
        return f"the devkit host for {self.app} {what}; its log ends:\n{tail}"

    @staticmethod
    def _kill_group(process: subprocess.Popen[str]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def _finish(self, process: subprocess.Popen[str]) -> None:
        self.returncode = process.returncode
        if self._reader is not None:
            self._reader.join(5)
        if process.stdout is not None:
            process.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        self._process = None


class HostLauncher:
    """Starts hosts that share base settings and an environment, each in its own work directory, and stops
    every one it started."""

    def __init__(self, *, work_root: Path, base_settings: Mapping[str, str], env: Mapping[str, str]) -> None:
        self.work_root = work_root
        self.base_settings = dict(base_settings)
        self.env = dict(env)
        self._hosts: list[HostProcess] = []

    def start(
        self, app: Path, settings: Mapping[str, str] | None = None, *, host_json: Path | None = None
    ) -> HostProcess:
        """Start a host for ``app`` with the base settings plus ``settings``; returns once it is ready."""
        work_dir = self.work_root / f"host-{len(self._hosts) + 1}-{app.parent.name}"
        host = HostProcess(
            app,
            work_dir=work_dir,
            settings={**self.base_settings, **(settings or {})},
            env=self.env,
            host_json=host_json,
        )
        self._hosts.append(host)
        return host.start()

    def stop_all(self) -> None:
        hosts, self._hosts = self._hosts, []
        for host in hosts:
            try:
                host.stop()
            except Exception:  # keep stopping the others; kill this one's group
                host.kill()
