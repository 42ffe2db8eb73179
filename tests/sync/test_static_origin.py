"""The TUF repository from a static origin: Debian's nginx serving the service's files, with docs/operations.md's
config; nodes learn the origin at enrollment and install from it."""

from __future__ import annotations

import httpx
import pytest
from support.net import free_port
from support.nginx import Nginx, doc_config

from edgerec.sync.node.enroll import enroll_node
from edgerec.sync.node.state import NodeState
from edgerec.sync.protocol.errors import ConfigError


@pytest.mark.slow
def test_nodes_install_from_the_static_origin(make_env, nginx_binary, tmp_path):
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    env = make_env(repo_url=origin + "/")  # the trailing slash is dropped
    snippet = doc_config("edgerec-origin.conf")
    snippet = snippet.replace("listen 127.0.0.1:8480;", f"listen 127.0.0.1:{port};")
    snippet = snippet.replace("/var/lib/edgerec/sync/repository", str(env.data_dir / "repository"))
    proxy = Nginx(nginx_binary, snippet, [port])
    try:
        ident = enroll_node(tmp_path / "node", env.url, env.token(), "origin-node")
        assert (ident.metadata_url, ident.targets_url) == (origin + "/metadata/", origin + "/targets/")
        env.publish(1)
        env.admin().rollout("ctr", 1, "stable", 100, [])
        daemon = env.daemon(NodeState(tmp_path / "node"))
        result = daemon.run_once()
        assert result.installed == [("ctr", 1)] and result.failures == {}

        with httpx.Client(base_url=origin, timeout=10) as http:
            assert http.get("/metadata/timestamp.json").headers["Cache-Control"] == "no-cache"
            assert "immutable" in http.get("/metadata/1.root.json").headers["Cache-Control"]
            target = next(p for p in (env.data_dir / "repository" / "targets").rglob("*") if p.is_file())
            rel = target.relative_to(env.data_dir / "repository").as_posix()
            part = http.get("/" + rel, headers={"Range": "bytes=10-19"})
            assert part.status_code == 206 and part.content == target.read_bytes()[10:20]
            assert http.get("/sync.db").status_code == 404  # only the repository folder is served
    finally:
        proxy.stop()


def test_a_bad_repo_url_is_refused_before_the_token_is_spent(sync_env, tmp_path):
    token = sync_env.token()
    for bad in ("ftp://origin", "https://origin/?x=1", "origin.example.com"):
        with pytest.raises(ConfigError, match="--repo-url"):
            enroll_node(tmp_path / "n", sync_env.url, token, "n", repo_url=bad)
    ident = enroll_node(tmp_path / "n", sync_env.url, token, "n", repo_url="https://cdn.example.com/fleet/")
    assert ident.metadata_url == "https://cdn.example.com/fleet/metadata/"
