"""The SDK's commands through the installed ``edgerec`` script: output, exit codes, one-line errors."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgerec.sdk.testing import sample_inputs

EDGEREC = shutil.which("edgerec", path=str(Path(sys.executable).parent)) or "edgerec"


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "EDGEREC_LOG_NATIVE"}  # quiet unless a test asks
    full.update({"COLUMNS": "200", **(env or {})})
    return subprocess.run([EDGEREC, *args], capture_output=True, text=True, cwd=cwd, env=full, timeout=300)


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    for n in needles:
        assert n in err, err


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("keys")
    assert run("keys", "generate", "--out", str(d), "--name", "pub").returncode == 0
    assert run("keys", "generate", "--out", str(d), "--name", "node", "--kind", "x25519").returncode == 0
    return d


@pytest.fixture(scope="module")
def pkg(keys, ctr_weights, tmp_path_factory) -> Path:
    from edgerec.sdk import load_signing_key
    from edgerec.sdk.testing import ctr_builder

    return ctr_builder(ctr_weights).write(tmp_path_factory.mktemp("pkg") / "ctr.edgepkg",
                                           load_signing_key(keys / "pub.key"))


def test_keys_generate_modes_and_ids(keys):
    assert stat.S_IMODE((keys / "pub.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((keys / "node.key").stat().st_mode) == 0o600
    assert b"PUBLIC KEY" in (keys / "pub.pub").read_bytes()
    proc = run("keys", "generate", "--out", str(keys), "--name", "pub")
    one_line_error(proc, "already exists")
    proc = run("keys", "generate", "--out", str(keys), "--name", "x", "--json")
    doc = json.loads(proc.stdout)
    from edgerec.sdk import key_id, load_verify_key

    assert doc["key_id"] == key_id(load_verify_key(keys / "x.pub"))


def test_inspect_and_verify(pkg, keys):
    proc = run("package", "verify", str(pkg), "-k", str(keys / "pub.pub"))
    assert proc.returncode == 0 and "ok: ctr v1" in proc.stdout
    proc = run("package", "inspect", str(pkg), "-k", str(keys / "pub.pub"), "--json")
    doc = json.loads(proc.stdout)
    assert doc["name"] == "ctr" and doc["encrypted"] is False
    assert [a["format"] for a in doc["artifacts"]] == ["onnx"]
    proc = run("package", "inspect", str(pkg), "-k", str(keys / "pub.pub"))
    assert "user_id" in proc.stdout and "vocab/user_id.json" in proc.stdout


def test_verify_refuses_untrusted_and_tampered(pkg, keys, tmp_path):
    assert run("keys", "generate", "--out", str(tmp_path), "--name", "stranger").returncode == 0
    one_line_error(run("package", "verify", str(pkg), "-k", str(tmp_path / "stranger.pub")), "no trusted key")
    one_line_error(run("package", "verify", str(pkg), "-k", str(keys / "node.pub")), "expected an Ed25519 key")
    bad = tmp_path / "bad.edgepkg"
    bad.write_bytes(pkg.read_bytes()[:-40])
    one_line_error(run("package", "verify", str(bad), "-k", str(keys / "pub.pub")), str(bad))
    missing = tmp_path / "none.edgepkg"
    one_line_error(run("package", "verify", str(missing), "-k", str(keys / "pub.pub")), "none.edgepkg")
    one_line_error(run("package", "verify", str(pkg), "-k", str(tmp_path / "missing.pub")), "missing.pub")


def test_encrypt_then_predict_with_node_key(pkg, keys, tmp_path):
    out = tmp_path / "enc.edgepkg"
    proc = run("package", "encrypt", str(pkg), "-k", str(keys / "pub.pub"), "--recipient",
               f"node-1={keys / 'node.pub'}", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    inputs, ref = sample_inputs(4)
    np.savez(tmp_path / "in.npz", **inputs)
    proc = run("predict", str(out), "--input", str(tmp_path / "in.npz"), "-k", str(keys / "pub.pub"),
               "--recipient-key", str(keys / "node.key"), "--recipient-id", "node-1")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    np.testing.assert_allclose(np.ravel(doc["outputs"]["score"]), ref, atol=1e-5)
    one_line_error(run("predict", str(out), "--input", str(tmp_path / "in.npz"), "-k", str(keys / "pub.pub")),
                   "encrypted")


def test_predict_json_input_and_invalid_input(pkg, keys, tmp_path):
    inputs, ref = sample_inputs(2)
    (tmp_path / "in.json").write_text(json.dumps({k: v.tolist() for k, v in inputs.items()}))
    proc = run("predict", str(pkg), "--input", str(tmp_path / "in.json"), "-k", str(keys / "pub.pub"),
               "--accelerator", "gpu")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["accelerator"] == "cpu"
    np.testing.assert_allclose(np.ravel(doc["outputs"]["score"]), ref, atol=1e-5)
    bad = {k: v.tolist() for k, v in inputs.items()}
    bad["item_id"] = [1, 500]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    one_line_error(run("predict", str(pkg), "--input", str(tmp_path / "bad.json"), "-k", str(keys / "pub.pub")),
                   "item_id", "outside the valid range")
    (tmp_path / "broken.json").write_text("{")
    one_line_error(run("predict", str(pkg), "--input", str(tmp_path / "broken.json"), "-k", str(keys / "pub.pub")),
                   "broken.json")


def test_bench_json(pkg, keys):
    proc = run("bench", str(pkg), "-k", str(keys / "pub.pub"), "--batch-sizes", "1,8", "--repeats", "5",
               "--accelerators", "cpu,gpu", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {(r["requested"], r["batch"]) for r in rows} == {("cpu", 1), ("cpu", 8), ("gpu", 1), ("gpu", 8)}
    assert all(r["accelerator"] == "cpu" and r["p50_ms"] > 0 for r in rows)
    one_line_error(run("bench", str(pkg), "-k", str(keys / "pub.pub"), "--batch-sizes", "x"), "--batch-sizes")


def test_usage_errors_are_one_line():
    proc = run("keys", "generate", "--kind", "rsa")
    one_line_error(proc, "--kind", "rsa", "edgerec keys generate --help")
    assert proc.returncode == 2
    proc = run("package")  # a group without its subcommand: click's help, as before
    assert proc.returncode == 2 and "Commands:" in proc.stdout + proc.stderr and "error" not in proc.stderr


def test_missing_extra_is_one_line():
    # Every lazily loaded group names the extra it needs when its import fails, as text:
    # rich must not eat "[edge]" as a style tag.
    from edgerec.sdk.cli.main import LAZY

    assert set(LAZY) == {"convert", "serve", "api-key", "sync", "admin", "node", "demo"}
    assert {v[1] for v in LAZY.values()} == {"converter", "edge", "sync", "node", "all"}
    code = ("import sys; sys.modules['flask'] = None; from edgerec.sdk.cli.main import main; "
            "sys.argv = ['edgerec', 'serve', '--help']; main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: 'serve' needs the [edge] extra (flask is not installed): pip install 'edgerec[edge]'"]


def test_demo_device_json(tmp_path):
    proc = run("demo", "--device", "--workdir", str(tmp_path), "--repeats", "5", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert "fleet" not in doc
    rows = doc["device"]["results"]
    assert {r["backend"] for r in rows} == {"litert", "onnxruntime"}
    assert all("error" not in r for r in rows)
    assert all(r["max_abs_err"] < 1e-5 for r in rows)
    assert all(r["accelerator"] == "cpu" for r in rows)
    assert len({tuple(i for i, _ in r["top3"]) for r in rows}) == 1  # every backend ranks the same
    assert stat.S_IMODE((tmp_path / "device" / "publisher.key").stat().st_mode) == 0o600


# LiteRT's C++ logger, TensorFlow's absl lines, LiteRT's source traces and its destructors at exit.
NATIVE_LOG = re.compile(r"^(INFO|WARNING|ERROR|FATAL): |^[IWEF]\d{4} |DestroyAccelerator|XNNPACK|absl::"
                        r"|^=== Source Location Trace")


def native_lines(*texts: str) -> list[str]:
    return [line for text in texts for line in text.splitlines() if NATIVE_LOG.search(line)]


def test_demo_device_prints_only_its_story(tmp_path):
    # A relative --workdir, from the working directory.
    proc = run("demo", "--device", "--workdir", "work", "--repeats", "5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert native_lines(proc.stdout, proc.stderr) == []
    assert proc.stderr == ""  # no progress when stderr is not a terminal, no fallback warnings: the story says it
    assert "4. verified, decrypted in memory, loaded, ranked" in proc.stdout
    assert (tmp_path / "work" / "device" / "ctr-1.edgepkg").is_file()
    if importlib.util.find_spec("tensorflow") is None:
        return  # no LiteRT artifacts, so no LiteRT to hear from
    # The switch brings them back: the check above can fail.
    loud = run("demo", "--device", "--workdir", "work", "--repeats", "5", "--json", cwd=tmp_path,
               env={"EDGEREC_LOG_NATIVE": "1"})
    assert loud.returncode == 0, loud.stderr[-2000:]
    assert any("DestroyAccelerator" in line for line in native_lines(loud.stderr))
    assert native_lines(loud.stdout) == [] and json.loads(loud.stdout)["device"]["results"]


@pytest.mark.slow
def test_demo_runs_the_whole_fleet_loop(tmp_path):
    """convert -> sync service -> enrolled node -> edge server -> rank, then a hot swap to v2."""
    proc = run("demo", "--workdir", str(tmp_path), "--repeats", "5", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    fleet = json.loads(proc.stdout)["fleet"]
    assert str(fleet["rank"]["1"]["version"]) == "1" and str(fleet["rank"]["2"]["version"]) == "2"
    assert len(fleet["rank"]["2"]["items"]) == 5
    assert fleet["rank"]["1"]["items"] != fleet["rank"]["2"]["items"]  # v2 really serves
    assert (fleet["status"]["desired_version"], fleet["status"]["installed_version"]) == (2, 2)
    assert {a["format"] for a in fleet["artifacts"]} == {"tflite", "ort"}
    assert {a["batch"] for a in fleet["artifacts"]} == {"dynamic", 16, 64}
    # the A/B part: two nodes' private releases of the simulated users' events, summed by the service
    ab = fleet["ab"]
    report = {v["variant"]: v for v in ab["report"]["variants"]}
    assert set(report) == {"control", "treatment"} and ab["report"]["windows_released"] >= 1
    for variant, sent in ab["sent"].items():  # noise: sd ~ 14 per count and window over two nodes
        assert abs(report[variant]["impressions"] - sent["impression"]) < 120, (variant, report, sent)
        assert abs(report[variant]["clicks"] - sent["click"]) < 120, (variant, report, sent)
    assert Path(ab["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the node's private keys stayed private, and nothing was left running
    assert stat.S_IMODE((tmp_path / "fleet" / "node" / "keys" / "recipient.key").stat().st_mode) == 0o600
