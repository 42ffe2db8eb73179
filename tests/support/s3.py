"""A real S3-compatible HTTP server on loopback for tests: moto's standalone server as a child process.

MinIO is not installable from the registries this project's machines reach (PyPI, Debian, npm); moto's
server (``moto[server]``, PyPI) speaks the same S3 REST API over HTTP. It keeps its buckets in memory:
after :meth:`MotoS3.kill` and :meth:`MotoS3.start` the store is empty, as a fresh bucket restored from
nothing would be.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .net import free_port, wait_http_ok

# Credentials of nobody: moto accepts any; they keep boto3 from looking for real ones on the machine.
_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
_DROP = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


class MotoS3:
    """``python -m moto.server -H 127.0.0.1 -p PORT``; :attr:`env` points boto3 (and replicas) at it."""

    def __init__(self, log: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables a process needs to use this server (endpoint, region, credentials)."""
        return {**_ENV, "AWS_ENDPOINT_URL_S3": self.url, "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull}

    def apply_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Set :attr:`env` in this process (for boto3 and in-process services), dropping other AWS settings."""
        for name in _DROP:
            monkeypatch.delenv(name, raising=False)
        for name, value in self.env.items():
            monkeypatch.setenv(name, value)

    def start(self) -> MotoS3:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_http_ok(self.url + "/moto-api/", self.proc, self.log, timeout=30, tail=2000)
        return self

    def kill(self) -> None:
        """SIGKILL: the store stops answering at once (connections refused from then on)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def client(self) -> Any:
        """A boto3 S3 client of this server (what the tests read the bucket back with)."""
        import boto3

        return boto3.session.Session().client(
            "s3", endpoint_url=self.url, region_name=_ENV["AWS_DEFAULT_REGION"],
            aws_access_key_id=_ENV["AWS_ACCESS_KEY_ID"], aws_secret_access_key=_ENV["AWS_SECRET_ACCESS_KEY"])
