"""A/B experiments: sticky hash assignment near the weights, variants in responses and metrics."""

from __future__ import annotations

import shutil
from collections import Counter

import pytest

from edgerec.edge_server.config import ServerConfig
from edgerec.edge_server.errors import ConfigError
from edgerec.edge_server.experiments import Experiment, ExperimentConfigError, Variant, parse_experiments

AB = [{"name": "ranker-ab", "model": "ctr", "salt": "s1",
       "variants": [{"name": "control", "version": 1, "weight": 0.7},
                    {"name": "treatment", "version": 2, "weight": 0.3}]}]


def test_assignment_is_sticky_and_near_the_weights():
    exp = Experiment("e", "m", (Variant("a", 1, 1.0), Variant("b", 2, 3.0)), salt="x")
    picks = Counter(exp.assign(f"user-{i}").name for i in range(20_000))
    assert abs(picks["b"] / 20_000 - 0.75) < 0.015
    assert all(exp.assign(f"user-{i}") == exp.assign(f"user-{i}") for i in range(100))
    other = Experiment("e", "m", exp.variants, salt="y")
    moved = sum(exp.assign(f"user-{i}") != other.assign(f"user-{i}") for i in range(2000))
    assert 500 < moved < 1000  # a new salt reshuffles users (expected 2 * 0.75 * 0.25 = 37.5%)


@pytest.mark.parametrize(("doc", "message"), [
    ("x", "expected a list"),
    ([{"name": "Bad Name", "model": "m", "variants": [{"name": "a", "version": 1}]}], "experiments[0].name"),
    ([{"name": "e", "model": "m", "variants": []}], "experiments[0].variants"),
    ([{"name": "e", "model": "m", "variants": [{"name": "a", "version": -1}]}], "variants[0].version"),
    ([{"name": "e", "model": "m", "variants": [{"name": "a", "version": 1, "weight": 0}]}], "weight"),
    ([{"name": "e", "model": "m", "variants": [{"name": "a", "version": 1}, {"name": "a", "version": 2}]}],
     "unique"),
    ([{"name": "e", "model": "m", "seed": 1, "variants": [{"name": "a", "version": 1}]}], "seed"),
])
def test_bad_experiment_config(doc, message):
    with pytest.raises(ExperimentConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_experiments(doc)


def test_config_file_with_experiments(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_text('[batching]\nmax_batch = 8\n[limits]\nmax_candidates = 50\n'
                    '[[experiments]]\nname = "ab"\nmodel = "ctr"\n'
                    '[[experiments.variants]]\nname = "a"\nversion = 1\n'
                    '[[experiments.variants]]\nname = "b"\nversion = 2\nweight = 2\n')
    values = ServerConfig.file_values(path)
    config = ServerConfig(**values)
    assert config.max_batch == 8 and config.max_candidates == 50
    assert [v.weight for v in config.experiments[0].variants] == [1.0, 2.0]
    assert ServerConfig.from_json(config.to_json()) == config
    path.write_text("[batching]\nmax_batch = 'lots'\n")
    with pytest.raises(ConfigError, match="max_batch"):
        ServerConfig.file_values(path)
    path.write_text("[nope]\n")
    with pytest.raises(ConfigError, match="unknown section"):
        ServerConfig.file_values(path)


@pytest.mark.parametrize(("setting", "message"), [
    ('accelerator = "tpu"', "accelerator: 'tpu' is not one of auto, cpu, gpu, npu"),
    ('backend = "tensorflow"', "backend: 'tensorflow' is not one of auto, litert, onnxruntime"),
])
def test_config_file_accelerator_and_backend_are_checked_at_start(tmp_path, setting, message):
    path = tmp_path / "edge.toml"
    path.write_text(f"[model]\n{setting}\n")
    with pytest.raises(ConfigError, match=message) as exc:
        ServerConfig(**ServerConfig.file_values(path))
    assert exc.value.field == setting.split(" ")[0]
    path.write_text('[model]\naccelerator = "gpu"\nbackend = "onnxruntime"\n')
    config = ServerConfig(**ServerConfig.file_values(path))
    assert (config.accelerator, config.backend) == ("gpu", "onnxruntime")


def test_server_splits_users_between_versions(serve, packages, tmp_path):
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    for key in ("v1", "v2"):
        shutil.copy(packages[key], model_dir)
    live = serve(model_dir=model_dir, experiments=parse_experiments(AB))
    served = {m["version"]: m["state"] for m in live.versions()}
    assert served == {1: "loaded", 2: "serving"}  # v1 stays loaded: it is a variant
    n = 600
    variants: dict[str, str] = {}
    versions = {"control": "1", "treatment": "2"}
    for i in range(n):
        doc = live.post("/v1/rank", json={"experiment": "ranker-ab", "user": {"id": f"user-{i}"},
                                          "candidates": [1, 2, 3]}).json()
        assert doc["experiment"] == "ranker-ab" and doc["version"] == versions[doc["variant"]]
        variants[f"user-{i}"] = doc["variant"]
    share = Counter(variants.values())["treatment"] / n
    assert abs(share - 0.3) < 4 * (0.3 * 0.7 / n) ** 0.5  # within four standard errors
    for i in range(0, 60, 3):  # sticky
        doc = live.post("/v1/rank", json={"experiment": "ranker-ab", "user": {"id": f"user-{i}"},
                                          "candidates": [4]}).json()
        assert doc["variant"] == variants[f"user-{i}"]
    counted = live.metric_sum("edgerec_requests_total", endpoint="rank.rank", variant="treatment")
    assert counted == Counter(variants.values())["treatment"] + sum(
        variants[f"user-{i}"] == "treatment" for i in range(0, 60, 3))
    r = live.post("/v1/rank", json={"experiment": "ranker-ab", "version": 1, "candidates": [1]})
    assert r.status_code == 400 and r.json()["field"] == "version"
    r = live.control("POST", "/models/ctr/versions/1/unload")
    assert r.status_code == 409 and "experiment" in r.json()["detail"]
