"""Every command that takes a path, run as a real ``edgerec`` process from a working
directory: with a missing path, with a relative one, and with an unreadable one.

Each error is one line on stderr, ``error: ...``, naming the path as typed, and no
command ends in a traceback. The suite runs as root, for whom ``chmod 000`` does not
make a file unreadable, so "unreadable" here is a path of the wrong kind: a folder
where a file is expected, a file where a folder is (reading either fails like a
denied one). Every case fails before any model is converted or loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from support.net import free_port, wait_for

from edgerec.sdk.keys import generate_keypair, load_signing_key
from edgerec.sdk.testing import ctr_builder, sample_inputs

EDGEREC = shutil.which("edgerec", path=str(Path(sys.executable).parent)) or "edgerec"
PKG = ["-k", "pub.pub"]
ENCRYPT = ["--recipient", "n=node.pub"]
SERVER = ["--server", "http://127.0.0.1:9", "--token-file", "tok"]  # tok: a 0600 file (secrets never on a command line)

# (command line, the path the error must name). In each working directory: keys
# pub.* (Ed25519) and node.* (X25519), ctr.edgepkg, in.npz, a folder "adir" and a
# file "afile"; "none*" and "nodir" do not exist.
MISSING = [
    (["keys", "generate", "--out", "afile/sub", "--name", "k"], "afile"),
    (["package", "inspect", "none.edgepkg", *PKG], "none.edgepkg"),
    (["package", "inspect", "ctr.edgepkg", "-k", "none.pub"], "none.pub"),
    (["package", "verify", "none.edgepkg", *PKG], "none.edgepkg"),
    (["package", "encrypt", "none.edgepkg", *PKG, *ENCRYPT, "--out", "e.edgepkg"], "none.edgepkg"),
    (["package", "encrypt", "ctr.edgepkg", *PKG, "--recipient", "n=none.pub", "--out", "e.edgepkg"], "none.pub"),
    (["predict", "none.edgepkg", "--input", "in.npz", *PKG], "none.edgepkg"),
    (["predict", "ctr.edgepkg", "--input", "none.npz", *PKG], "none.npz"),
    (["predict", "ctr.edgepkg", "--input", "in.npz", *PKG, "--recipient-key", "none.key"], "none.key"),
    (["bench", "none.edgepkg", *PKG], "none.edgepkg"),
    (["bench", "ctr.edgepkg", "-k", "none.pub"], "none.pub"),
    (["convert", "none.keras", "--out", "o.edgepkg", "--sign-key", "pub.key"], "none.keras"),
    (["convert", "afile", "--out", "o.edgepkg", "--sign-key", "none.key"], "none.key"),
    (["serve", "--model-dir", "nodir", *PKG], "nodir"),
    (["serve", "--model-dir", "adir", "-k", "none.pub", "--port", "0"], "none.pub"),
    (["serve", "--model-dir", "adir", *PKG, "--config", "none.toml"], "none.toml"),
    (["serve", "--model-dir", "adir", *PKG, "--recipient-key", "none.key", "--recipient-id", "n", "--port", "0"],
     "none.key"),
    (["serve", "--model-dir", "adir", *PKG, "--control-token-file", "none.token", "--port", "0"], "none.token"),
    (["serve", "--model-dir", "adir", *PKG, "--tls-cert", "none.pem", "--tls-key", "node.key"], "none.pem"),
    (["serve", "--model-dir", "adir", *PKG, "--api-key-file", "none.keys", "--port", "0"], "none.keys"),
    (["api-key", "list", "none.keys"], "none.keys"),
    (["api-key", "add", "none.keys", "n", "--key-out", "nodir/k"], "nodir"),
    (["sync", "serve", "--data-dir", "nodir", "--port", "0"], "nodir"),
    (["sync", "serve", "--data-dir", "adir", "--tls-cert", "none.pem", "--tls-key", "none.key"], "none.pem"),
    (["sync", "migrate", "--data-dir", "nodir"], "nodir"),
    (["admin", "--config", "none.json", "nodes"], "none.json"),
    (["admin", "init", "--data-dir", "d", "--keys-dir", "rk", "--publisher-key", "none.pub"], "none.pub"),
    (["admin", "token", "--data-dir", "nodir"], "nodir"),
    (["admin", "root-update", "--data-dir", "nodir", "--keys-dir", "adir"], "nodir"),
    (["admin", "publish", "none.edgepkg", "--channel", "stable"], "none.edgepkg"),
    (["admin", "--server", "http://127.0.0.1:9", "login", "--token-file", "tok", "--ca-cert", "none.pem"], "none.pem"),
    (["node", "enroll", *SERVER, "--state-dir", "st", "--ca-cert", "none.pem"], "none.pem"),
    (["node", "run", "--state-dir", "nodir", "--model-dir", "m", "--once"], "nodir"),
    (["node", "run", "--state-dir", "adir", "--model-dir", "m", "--edge-server", "http://127.0.0.1:9",
      "--control-token-file", "none.token", "--once"], "none.token"),
    (["node", "status", "--state-dir", "nodir"], "nodir"),
    (["node", "edge-config", "--state-dir", "nodir"], "nodir"),
    (["demo", "--device", "--workdir", "afile/sub"], "afile"),
]

WRONG_KIND = [
    (["keys", "generate", "--out", "afile", "--name", "k"], "afile"),
    (["package", "inspect", "adir", *PKG], "adir"),
    (["package", "inspect", "ctr.edgepkg", "-k", "adir"], "adir"),
    (["package", "inspect", "afile", *PKG], "afile"),  # a file, but not a package
    (["package", "verify", "adir", *PKG], "adir"),
    (["package", "encrypt", "adir", *PKG, *ENCRYPT, "--out", "e.edgepkg"], "adir"),
    (["package", "encrypt", "ctr.edgepkg", *PKG, "--recipient", "n=adir", "--out", "e.edgepkg"], "adir"),
    (["package", "encrypt", "ctr.edgepkg", *PKG, *ENCRYPT, "--out", "adir"], "adir"),
    (["predict", "adir", "--input", "in.npz", *PKG], "adir"),
    (["predict", "ctr.edgepkg", "--input", "adir", *PKG], "adir"),
    (["predict", "ctr.edgepkg", "--input", "in.npz", *PKG, "--recipient-key", "adir"], "adir"),
    (["bench", "adir", *PKG], "adir"),
    (["convert", "adir", "--out", "o.edgepkg", "--sign-key", "pub.key"], "adir"),
    (["convert", "afile", "--out", "o.edgepkg", "--sign-key", "adir"], "adir"),
    (["convert", "afile", "--out", "adir", "--sign-key", "pub.key"], "adir"),
    (["convert", "afile", "--out", "o.edgepkg", "--sign-key", "pub.key", "--eval", "adir"], "adir"),
    (["serve", "--model-dir", "afile", *PKG], "afile"),
    (["serve", "--model-dir", "adir", "-k", "adir"], "adir"),
    (["serve", "--model-dir", "adir", *PKG, "--config", "adir"], "adir"),
    (["serve", "--model-dir", "adir", *PKG, "--control-token-file", "adir", "--port", "0"], "adir"),
    (["serve", "--model-dir", "adir", *PKG, "--api-key-file", "adir", "--port", "0"], "adir"),
    (["api-key", "list", "adir"], "adir"),
    (["sync", "serve", "--data-dir", "afile", "--port", "0"], "afile"),
    (["sync", "serve", "--data-dir", "adir", "--port", "0"], "adir"),  # a folder, but not a data dir
    (["sync", "migrate", "--data-dir", "afile"], "afile"),
    (["admin", "--config", "adir", "nodes"], "adir"),
    (["admin", "init", "--data-dir", "afile", "--keys-dir", "rk", "--publisher-key", "pub.pub"], "afile"),
    (["admin", "init", "--data-dir", "d", "--keys-dir", "afile", "--publisher-key", "pub.pub"], "afile"),
    (["admin", "init", "--data-dir", "d", "--keys-dir", "rk", "--publisher-key", "adir"], "adir"),
    (["admin", "token", "--data-dir", "afile"], "afile"),
    (["admin", "root-update", "--data-dir", "afile", "--keys-dir", "adir"], "afile"),
    (["admin", "publish", "adir", "--channel", "stable"], "adir"),
    (["admin", "--server", "http://127.0.0.1:9", "login", "--token-file", "tok", "--ca-cert", "afile"], "afile"),
    (["node", "enroll", *SERVER, "--state-dir", "afile"], "afile"),
    (["node", "run", "--state-dir", "afile", "--model-dir", "m", "--once"], "afile"),
    (["node", "run", "--state-dir", "adir", "--model-dir", "afile", "--once"], "afile"),
    (["node", "status", "--state-dir", "afile"], "afile"),
    (["node", "edge-config", "--state-dir", "afile"], "afile"),
    (["demo", "--device", "--workdir", "afile"], "afile"),
]


def edgerec(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EDGEREC, *args], capture_output=True, text=True, cwd=cwd, env=_env(cwd),
                          timeout=timeout)


def _env(cwd: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("EDGEREC_SERVER", "EDGEREC_ADMIN_TOKEN", "EDGEREC_TRUSTED_KEYS", "EDGEREC_SIGN_KEY",
                        "EDGEREC_MODEL_DIR", "EDGEREC_CONTROL_TOKEN", "EDGEREC_CONTROL_TOKEN_FILE")}
    return {**env, "EDGEREC_ADMIN_CONFIG": str(cwd / "admin.json"), "COLUMNS": "200"}


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr


def one_line_error(proc: subprocess.CompletedProcess[str], path: str) -> None:
    no_traceback(proc)
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert path in lines[0], lines[0]


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, ctr_weights: dict[str, np.ndarray]) -> Path:
    d = tmp_path_factory.mktemp("files")
    generate_keypair(d, "pub", "ed25519")
    generate_keypair(d, "node", "x25519")
    ctr_builder(ctr_weights).write(d / "ctr.edgepkg", load_signing_key(d / "pub.key"))
    with (d / "in.npz").open("wb") as fh:
        np.savez(fh, **sample_inputs(2)[0])
    (d / "adir").mkdir()
    (d / "afile").write_text("not what anyone expects\n")
    return d


@pytest.fixture
def cwd(files: Path, tmp_path: Path) -> Path:
    """A fresh working directory holding copies of ``files``."""
    work = tmp_path / "cwd"
    shutil.copytree(files, work)
    (work / "tok").write_text("t")
    (work / "tok").chmod(0o600)
    return work


@pytest.mark.parametrize(("args", "path"), MISSING, ids=[" ".join(a[:2]) + f" {p}" for a, p in MISSING])
def test_missing_path(args: list[str], path: str, cwd: Path) -> None:
    one_line_error(edgerec(*args, cwd=cwd), path)


@pytest.mark.parametrize(("args", "path"), WRONG_KIND, ids=[" ".join(a[:2]) + f" {p}" for a, p in WRONG_KIND])
def test_unreadable_path(args: list[str], path: str, cwd: Path) -> None:
    one_line_error(edgerec(*args, cwd=cwd), path)


def test_relative_paths_of_the_sdk_commands(cwd: Path) -> None:
    out = json.loads(ok(edgerec("keys", "generate", "--out", "new/keys", "--name", "k", "--json", cwd=cwd)))
    assert (cwd / "new" / "keys" / "k.key").is_file() and Path(out["private"]).name == "k.key"
    assert "ctr" in ok(edgerec("package", "inspect", "ctr.edgepkg", *PKG, cwd=cwd))
    assert ok(edgerec("package", "verify", "ctr.edgepkg", *PKG, cwd=cwd)).startswith("ok: ctr v1")
    ok(edgerec("package", "encrypt", "ctr.edgepkg", *PKG, *ENCRYPT, "--out", "out/enc.edgepkg", cwd=cwd))
    assert (cwd / "out" / "enc.edgepkg").is_file()
    doc = json.loads(ok(edgerec("predict", "out/enc.edgepkg", "--input", "in.npz", *PKG,
                                "--recipient-key", "node.key", "--recipient-id", "n", cwd=cwd)))
    assert len(np.ravel(doc["outputs"]["score"])) == 2
    rows = json.loads(ok(edgerec("bench", "ctr.edgepkg", *PKG, "--batch-sizes", "1", "--repeats", "5", "--json",
                                 cwd=cwd)))
    assert rows and rows[0]["batch"] == 1


def test_relative_model_dir_of_the_edge_server(cwd: Path) -> None:
    (cwd / "models").mkdir()
    shutil.copy(cwd / "ctr.edgepkg", cwd / "models")
    port = free_port()
    with Running(cwd, "serve", "--model-dir", "models", *PKG, "--port", str(port)) as proc:
        assert wait_for(lambda: _answers(f"http://127.0.0.1:{port}/v2/models/ctr/ready", proc), 60)


def test_relative_paths_of_the_sync_service_admin_and_node(cwd: Path) -> None:
    """Today's bug: ``sync serve --data-dir sync`` died in Flask's instance_path."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ok(edgerec("admin", "init", "--data-dir", "sync", "--keys-dir", "root-keys", "--publisher-key", "pub.pub",
               "--server-url", url, cwd=cwd))
    ok(edgerec("sync", "migrate", "--data-dir", "sync", cwd=cwd))
    assert ok(edgerec("admin", "token", "--data-dir", "sync", cwd=cwd)).strip()
    with Running(cwd, "sync", "serve", "--data-dir", "sync", "--port", str(port)) as proc:
        assert wait_for(lambda: _answers(f"{url}/repository/metadata/timestamp.json", proc), 60)
        token = json.loads(ok(edgerec("admin", "enroll-token", "create", "--json", cwd=cwd)))["token"]
        (cwd / "enroll.token").write_text(token)
        (cwd / "enroll.token").chmod(0o600)
        ok(edgerec("node", "enroll", "--server", url, "--token-file", "enroll.token", "--state-dir", "node",
                   cwd=cwd))
        assert json.loads(ok(edgerec("node", "status", "--state-dir", "node", "--json", cwd=cwd)))["node_id"]
        ok(edgerec("node", "run", "--state-dir", "node", "--model-dir", "models", "--once", cwd=cwd))
        publish = edgerec("admin", "publish", "ctr.edgepkg", "--channel", "stable", "--json", cwd=cwd)
        assert json.loads(ok(publish))["name"] == "ctr"


class Running:
    """A long-running ``edgerec`` command, its output in a file, stopped with SIGTERM."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.log = cwd / "server.log"
        with self.log.open("wb") as fh:
            self.proc = subprocess.Popen([EDGEREC, *args], stdout=fh, stderr=subprocess.STDOUT, cwd=cwd,
                                         env=_env(cwd))

    def __enter__(self) -> subprocess.Popen[bytes]:
        return self.proc

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert "Traceback" not in self.log.read_text(), self.log.read_text()


def _answers(url: str, proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, f"exited with {proc.returncode}"
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
