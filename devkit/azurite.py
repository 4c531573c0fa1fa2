"""Start the pinned Azurite (from node_modules) on free ports and read the ports from its start-up lines."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = REPO_ROOT / "node_modules" / ".bin" / "azurite"

# Azurite's well-known development account (public, documented by Microsoft; not a secret).
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

_LISTENING = re.compile(r"Azurite (Blob|Queue|Table) service is successfully listening at http://[^:]+:(\d+)")


@dataclass(frozen=True)
class AzuriteEndpoints:
    blob_port: int
    queue_port: int
    table_port: int
    host: str = "127.0.0.1"

    @property
    def connection_string(self) -> str:
        return (
            "DefaultEndpointsProtocol=http;"
            f"AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
            f"BlobEndpoint=http://{self.host}:{self.blob_port}/{DEV_ACCOUNT};"
            f"QueueEndpoint=http://{self.host}:{self.queue_port}/{DEV_ACCOUNT};"
            f"TableEndpoint=http://{self.host}:{self.table_port}/{DEV_ACCOUNT};"
        )


class Azurite:
    """A running Azurite process; use as a context manager or call ``start``/``stop``."""

    def __init__(self, startup_timeout: float = 60.0) -> None:
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[str] | None = None
        self.endpoints: AzuriteEndpoints | None = None
        self._lines: list[str] = []
        self._drainer: threading.Thread | None = None

    def start(self) -> AzuriteEndpoints:
        if not AZURITE_BIN.exists():
            raise RuntimeError(f"Azurite is not installed at {AZURITE_BIN}; run 'make setup' (npm ci) first")
        self._process = subprocess.Popen(
            [
                str(AZURITE_BIN),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                "0",
                "--queueHost",
                "127.0.0.1",
                "--queuePort",
                "0",
                "--tableHost",
                "127.0.0.1",
                "--tablePort",
                "0",
                "--skipApiVersionCheck",
                "--inMemoryPersistence",
                "--disableProductStyleUrl",
                # Telemetry probes the cloud metadata address (169.254.169.254); those hanging connections
                # made every graceful stop wait out the 10 s below.
                "--disableTelemetry",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        ports: dict[str, int] = {}
        deadline = time.monotonic() + self._startup_timeout
        assert self._process.stdout is not None
        while len(ports) < 3:
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("Azurite did not start in time:\n" + "".join(self._lines[-20:]))
            line = self._process.stdout.readline()
            if not line:
                self.stop()
                raise RuntimeError("Azurite exited during start-up:\n" + "".join(self._lines[-20:]))
            self._lines.append(line)
            match = _LISTENING.search(line)
            if match:
                ports[match.group(1)] = int(match.group(2))
        # Keep draining its output so a full pipe never blocks it.
        self._drainer = threading.Thread(target=self._drain, daemon=True, name="azurite-output")
        self._drainer.start()
        self.endpoints = AzuriteEndpoints(ports["Blob"], ports["Queue"], ports["Table"])
        return self.endpoints

    def _drain(self) -> None:
        process = self._process
        if process is None or process.stdout is None:
            return
        for _line in process.stdout:
            pass

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait(timeout=10)
        if self._drainer is not None:
            self._drainer.join(timeout=5)
        if process.stdout is not None:
            process.stdout.close()  # else the pipe is closed by the GC, with a ResourceWarning

    def __enter__(self) -> AzuriteEndpoints:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
