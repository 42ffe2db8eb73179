"""``edgerec admin metrics``: operational figures per node and for the fleet, from windows planted over HTTP."""

from __future__ import annotations

import json

import httpx
import pytest
from click.testing import CliRunner

from edgerec.sdk.cli.main import cli
from edgerec.sync.admin.client import Credentials, save_credentials
from edgerec.sync.admin.plots import save_png
from edgerec.sync.node.fleet_metrics import OpsRecorder, metrics_report

from .helpers import node_client

T0 = 1_767_225_600
NAME = "[bold]edge[/bold] \\x1b"  # node-supplied: shown as written, never as markup


def _plant(env) -> tuple[str, str]:
    """Two nodes, two 5-minute windows each (and an older window the last-2 view leaves out)."""
    a, b = env.enroll(NAME), env.enroll("b")
    ra, rb = OpsRecorder(300, grace_s=0), OpsRecorder(300, grace_s=0)
    for i in range(100):
        ra.request(T0 - 300 + i, "ctr", 1, 3000.0)  # older window: slow, outside --windows 2
        ra.request(T0 + i, "ctr", 1, 4.0, error="internal" if i < 2 else None)  # <= 5 ms, 2 % errors
        rb.request(T0 + i, "ctr", 1, 15.0 if i < 98 else 150.0)  # 98 <= 20 ms, 2 <= 200 ms
        ra.request(T0 + 300 + i, "ctr", 1, 400.0)  # <= 500 ms
        rb.request(T0 + 300 + i, "ctr", 1, 15.0 if i < 50 else 9000.0)  # half past the last bucket
        rb.request(T0 + 300 + i, "other", 1, 1.5)  # another model (filtered by --model)
    node_client(a).report(metrics_report([], ra.closed(T0 + 600)))
    node_client(b).report(metrics_report([], rb.closed(T0 + 600)))
    return a.identity().node_id, b.identity().node_id


@pytest.fixture
def run(monkeypatch, tmp_path, sync_env):
    monkeypatch.setenv("EDGEREC_ADMIN_CONFIG", str(tmp_path / "admin.json"))
    monkeypatch.setenv("COLUMNS", "250")
    save_credentials(Credentials(sync_env.url, sync_env.init.admin_token), tmp_path / "admin.json")

    def invoke(*args: str, code: int = 0):
        result = CliRunner().invoke(cli, list(args))
        assert result.exit_code == code, result.output
        return result

    return invoke


def test_figures_per_node_and_fleet(sync_env, run, tmp_path):
    a, b = _plant(sync_env)
    doc = json.loads(run("admin", "metrics", "--windows", "2", "--model", "ctr", "--json",
                         "--plot", str(tmp_path / "lat.png")).stdout)
    assert doc["windows"] == [T0, T0 + 300] and doc["nodes_total"] == 2
    fleet = doc["fleet"]
    assert (fleet["requests"], fleet["errors"], fleet["error_rate"]) == (400, 2, 0.005)
    # fleet over both windows: 100 <= 5 ms, 148 <= 20, 2 <= 200, 100 <= 500, 50 past 5000 ms
    assert (fleet["p50_ms"], fleet["p95_ms"], fleet["p99_ms"]) == (20.0, None, None)
    first = fleet["series"][0]
    assert (first["window_start"], first["p50_ms"], first["p95_ms"], first["p99_ms"]) == (T0, 5.0, 20.0, 20.0)
    nodes = {n["node"]: n for n in doc["nodes"]}
    assert nodes[a]["name"] == NAME  # intact in --json
    assert [(s["p50_ms"], s["p99_ms"], s["error_rate"]) for s in nodes[a]["series"]] == [
        (5.0, 5.0, 0.02), (500.0, 500.0, 0.0)]
    assert [(s["p50_ms"], s["p95_ms"], s["p99_ms"]) for s in nodes[b]["series"]] == [
        (20.0, 20.0, 200.0), (20.0, None, None)]  # None past the last bucket: it has requests
    assert doc["nodes"][0]["node"] == b  # the worst p99 first
    png = (tmp_path / "lat.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    every = json.loads(run("admin", "metrics", "--json").stdout)  # all models, all (3) windows
    assert every["windows"] == [T0 - 300, T0, T0 + 300] and every["fleet"]["requests"] == 600
    one = json.loads(run("admin", "metrics", "--node", a, "--max-nodes", "1", "--json").stdout)
    assert [n["node"] for n in one["nodes"]] == [a] and one["fleet"]["requests"] == 300

    unwritable = run("admin", "metrics", "--plot", str(tmp_path / "missing" / "lat.png"), code=1)
    assert unwritable.output.count("\n") == 1 and "--plot: cannot write" in unwritable.output

    table = run("admin", "metrics", "--windows", "2").stdout
    assert NAME in table and "fleet" in table and ">5000" in table and "0.40%" in table  # all models: 2 errors in 500


@pytest.mark.parametrize(("args", "field", "code"), [
    (["--windows", "0"], "--windows", 2),
    (["--windows", "289"], "--windows", 2),
    (["--windows", "x"], "--windows", 2),
    (["--max-nodes", "1001"], "--max-nodes", 2),
    (["--model", "Ctr/1"], "--model", 1),
    (["--node", "../x"], "--node", 1),
])
def test_bad_flags_are_one_line_errors(monkeypatch, tmp_path, args, field, code):
    # refused before any request: the credentials name a port nothing listens on
    monkeypatch.setenv("EDGEREC_ADMIN_CONFIG", str(tmp_path / "admin.json"))
    save_credentials(Credentials("http://127.0.0.1:9", "t" * 32), tmp_path / "admin.json")
    out = CliRunner().invoke(cli, ["admin", "metrics", *args])
    assert out.exit_code == code and out.output.count("\n") == 1 and field in out.output, out.output


def test_bad_query_parameters_are_400_naming_the_field_and_the_token_is_checked(sync_env):
    url, auth = f"{sync_env.url}/api/v1/admin/ops-metrics", {"Authorization": f"Bearer {sync_env.init.admin_token}"}
    for query, field in (("windows=0", "windows"), ("windows=1000", "windows"), ("windows=a", "windows"),
                         ("max_nodes=0", "max_nodes"), ("model=A%2Fb", "model"), ("node=..", "node")):
        resp = httpx.get(f"{url}?{query}", headers=auth)
        assert (resp.status_code, resp.json()["field"]) == (400, field), query
    assert httpx.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.get(url).status_code == 401


MATH = "$\\foo{$"  # math text to matplotlib: an unknown symbol made savefig raise


def _captured(monkeypatch, module) -> list:
    """The figures ``module`` saves (still written by the real save_png)."""
    figs: list = []

    def capture(fig, path):
        figs.append(fig)
        save_png(fig, path)

    monkeypatch.setattr(module, "save_png", capture)
    return figs


def test_plots_draw_node_and_admin_strings_as_plain_text(monkeypatch, tmp_path):
    from edgerec.sync.admin import metrics_cli, ops_cli

    series = [{"window_start": T0 + 300 * i, "requests": 10, "p50_ms": 5.0, "p95_ms": 20.0, "p99_ms": None}
              for i in range(2)]
    doc = {"windows": [T0, T0 + 300], "latency_overflow_ms": 5000.0, "fleet": {"series": series},
           "nodes": [{"node": "n-1", "name": MATH, "series": series},
                     {"node": "n-2", "name": "_hidden", "series": series}]}
    figs = _captured(monkeypatch, ops_cli)
    ops_cli.plot_ops(doc, tmp_path / "ops.png")
    assert (tmp_path / "ops.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    texts = [t.get_text() for t in figs[0].axes[-1].get_legend().get_texts()]
    assert texts == [f"{MATH} (n-1)", "_hidden (n-2)", "fleet"]  # as given, none left out

    pts = [{"variant": v, "window_start": T0 + 3600 * i, "ctr": 0.05, "low": 0.04, "high": 0.06}
           for v in (MATH, "_control") for i in range(2)]
    report = {"experiment": "exp_$x$", "alpha": 0.05, "variants": [{"variant": "_control"}, {"variant": MATH}],
              "series": pts}
    figs = _captured(monkeypatch, metrics_cli)
    metrics_cli.plot_report(report, tmp_path / "ab.png")
    assert (tmp_path / "ab.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = figs[0].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["_control", MATH]
    assert ax.get_title() == "experiment exp_$x$" and not ax.title.get_parse_math()
