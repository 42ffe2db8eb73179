"""The Dockerfile, compose.yaml and systemd units run commands this edgerec knows, and no secret rides on them.

No Docker engine runs where the tests run, so the images are not built here; what can be checked without one
is that every command they start parses (``--help`` after all of its options: click refuses an unknown option
first), that secrets come from files, and that nginx gets the configuration docs/operations.md documents.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _parses(argv: list[str]) -> None:
    out = subprocess.run([sys.executable, "-m", "edgerec.sdk.cli", *argv, "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, f"{argv}: {out.stderr}"
    assert not any(a in ("--token", "--password") for a in argv)


def _dockerfile_cmds() -> dict[str, list[str]]:
    cmds, stage = {}, ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if m := re.match(r"FROM \S+ AS (\w+)", line):
            stage = m[1]
        if line.startswith("CMD "):
            cmds[stage] = json.loads(line.removeprefix("CMD "))
    return cmds


@pytest.mark.parametrize("stage", ["node", "sync"])
def test_each_image_runs_an_edgerec_command(stage):
    cmd = _dockerfile_cmds()[stage]
    assert 'ENTRYPOINT ["edgerec"]' in (ROOT / "Dockerfile").read_text()
    _parses(cmd)


def test_compose_services_run_known_commands_with_file_secrets():
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = doc["services"]
    _parses(services["sync"]["command"])
    assert services["sync"]["environment"] == {"PGPASSFILE": "/run/secrets/pgpass"}
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/pg_password"
    for name, service in services.items():  # no secret value in any environment
        for key, value in (service.get("environment") or {}).items():
            assert not re.search(r"PASSWORD$|TOKEN$|DB_URL$", key) or str(value).startswith("/run/secrets/"), name
    assert set(doc["secrets"]) >= {"pg_password", "pgpass", "enroll.token"}
    # Every `edgerec` step in the header comment parses too.
    header = "\n".join(ln[1:].strip() for ln in (ROOT / "compose.yaml").read_text().splitlines()
                       if ln.startswith("#"))
    steps = re.findall(r"docker compose run --rm (?:sync|node) ((?:[^\n]|\\\n)+)", header.replace("\\\n", " "))
    assert len(steps) == 2
    for step in steps:
        _parses(shlex.split(step.split("#")[0]))


def test_compose_origin_serves_the_documented_nginx_config():
    from support.nginx import doc_config

    documented = doc_config("edgerec-origin.conf")
    shipped = (ROOT / "examples" / "compose" / "origin.conf").read_text()
    assert shipped == documented.replace("listen 127.0.0.1:8480;", "listen 8480;")


@pytest.mark.parametrize("unit", ["edgerec-node.service", "edgerec-sync.service"])
def test_systemd_units_run_known_commands(unit):
    """ExecStart and the install steps in each unit's comment."""
    text = (ROOT / "examples" / "systemd" / unit).read_text().replace("\\\n#", " ").replace("\\\n", " ")
    commands = [shlex.split(line.split("#")[0]) for line in re.findall(r"/opt/edgerec/bin/edgerec ([^\n]+)", text)]
    assert len(commands) >= 2
    for argv in commands:
        _parses(argv)
    start = shlex.split(next(ln for ln in text.splitlines() if ln.startswith("ExecStart=")).removeprefix("ExecStart="))
    assert start[0] == "/opt/edgerec/bin/edgerec"
    if unit == "edgerec-node.service":
        assert "--serve" in start and "--state-dir" in start and "--model-dir" in start


def test_the_files_the_images_copy_build_every_module(tmp_path):
    """What the Dockerfile's source stage copies is enough to build edgerec: a wheel built from only those files
    holds every module of this tree and the ``edgerec`` command (the step an image build would fail at first)."""
    import shutil
    import zipfile

    stage = tmp_path / "src"
    stage.mkdir()
    copies = re.findall(r"^COPY (.+) (\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert copies, "the Dockerfile copies nothing"
    for sources, dest in copies:
        for name in sources.split():
            src, target = ROOT / name, stage / (name if dest in ("./", ".") else dest)
            if src.is_dir():
                shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, target)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path / "wheel"), str(stage)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (built,) = (tmp_path / "wheel").glob("edgerec-*.whl")
    names = set(zipfile.ZipFile(built).namelist())
    mapping = {"sdk": "edgerec/sdk", "converter": "edgerec/converter", "edge_server": "edgerec/edge_server",
               "sync": "edgerec/sync", "examples/fleet": "edgerec/examples/fleet"}
    expected = {f"{pkg}/{py.relative_to(ROOT / folder).as_posix()}" for folder, pkg in mapping.items()
                for py in (ROOT / folder).rglob("*.py") if "__pycache__" not in py.parts}
    assert expected - names == set()
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "edgerec = " in zipfile.ZipFile(built).read(entry).decode()
