"""``--npu vendor:SOC``: LiteRT artifacts compiled ahead of time for NPUs, recorded per target.

Compilation needs the vendor SDK that ``ai-edge-litert-sdk-qualcomm`` /
``-mediatek`` download when they are built. Here those packages install, but
their download hosts (softwarecenter.qualcomm.com, MediaTek's S3 bucket) do not
resolve, so the compilers fail for want of libQnnHtp.so / the NeuroPilot
adapter: the test asserts the artifact where the SDK is present and the exact
one-line reason where it is not. Packaging and the device-side choice are
tested with the compiler stubbed (it returns its input).
"""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest
from click.testing import CliRunner

from edgerec.converter import npu
from edgerec.converter.errors import ConversionError
from edgerec.converter.pipeline import ConvertOptions, convert
from edgerec.sdk.capabilities import DeviceCapabilities
from edgerec.sdk.cli.main import cli
from edgerec.sdk.keys import generate_keypair
from edgerec.sdk.manifest import NpuTarget
from edgerec.sdk.model import EdgeModel, load_plan
from edgerec.sdk.package import Package

QC, MTK = NpuTarget("qualcomm", "SM8650"), NpuTarget("mediatek", "MT6989")


@pytest.mark.parametrize(("spec", "expected"), [
    ("qualcomm:SM8650", [QC]),
    ("qualcomm:sm8650, mediatek:MT6989,qualcomm:SM8650", [QC, MTK]),
    (None, []),
])
def test_parse_targets(spec, expected):
    assert npu.parse_targets(spec) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("nvidia:orin", "--npu 'nvidia:orin': expected vendor:SOC with vendor qualcomm or mediatek"),
    ("qualcomm", "--npu 'qualcomm': expected vendor:SOC"),
    ("qualcomm:SM9999", "--npu qualcomm:SM9999: the qualcomm compiler does not know SoC SM9999 (it knows SA8255"),
    ("mediatek:MT1234", "the mediatek compiler does not know SoC MT1234 (it knows MT6853"),
])
def test_bad_targets_are_named(spec, message):
    with pytest.raises(ConversionError) as err:
        npu.parse_targets(spec)
    assert message in str(err.value)


def _model():
    import keras

    keras.utils.set_random_seed(5)
    user = keras.Input((), dtype="int32", name="user_id")
    ctx = keras.Input((4,), dtype="float32", name="ctx")
    x = keras.layers.Concatenate()([keras.layers.Embedding(50, 8)(user), ctx])
    return keras.Model({"user_id": user, "ctx": ctx}, {"score": keras.layers.Dense(1, activation="sigmoid")(x)})


@pytest.fixture(scope="module")
def stubbed(signing_key, tmp_path_factory):
    """A package converted with --npu for two SoCs, the vendor compiler replaced by one that returns its input."""
    calls = []

    def fake_compile(data, target):
        calls.append((target, len(data)))
        return npu.Compiled(data, npu_ops=3, ops=5)

    mp = pytest.MonkeyPatch()
    mp.setattr(npu, "compile_for", fake_compile)
    try:
        out = tmp_path_factory.mktemp("npu") / "m.edgepkg"
        opts = ConvertOptions(name="m", quantize="none", formats=("tflite",), batch_buckets=(1, 4),
                              npu="qualcomm:SM8650,mediatek:MT6989")
        res = convert(_model(), out, signing_key, opts)
    finally:
        mp.undo()
    return res, calls


def test_each_bucket_is_compiled_for_each_target_and_recorded(stubbed):
    res, calls = stubbed
    assert [(t, n > 0) for t, n in calls] == [(QC, True), (QC, True), (MTK, True), (MTK, True)]
    arts = res.manifest.artifacts
    assert [a.path for a in arts] == [
        "model-fp32.tflite", "model-fp32-b1.tflite", "model-fp32-b4.tflite",
        "model-fp32-b1.mediatek-mt6989.tflite", "model-fp32-b4.mediatek-mt6989.tflite",
        "model-fp32-b1.qualcomm-sm8650.tflite", "model-fp32-b4.qualcomm-sm8650.tflite",
    ]
    for a in arts[3:]:
        assert a.npu_target in (QC, MTK) and a.accelerators == ("npu",) and a.batch in (1, 4)
        assert a.extra["npu_ops"] == 3 and a.extra["ops"] == 5
        assert a.extra["compiled_from"] == f"model-fp32-b{a.batch}.tflite"
        sdk_package = f"ai-edge-litert-sdk-{a.npu_target.vendor}"
        # the vendor SDK's version is recorded exactly when its package (the [npu] extra) is installed
        assert (sdk_package in a.runtime) == _installed(sdk_package)
    for a in arts[:3]:
        assert a.npu_target is None


def test_the_device_picks_its_socs_artifacts(stubbed, signing_key):
    res, _ = stubbed
    m = res.manifest
    on_qc = load_plan(m, "auto", "auto", None, DeviceCapabilities("qualcomm", "SM8650", ("cpu", "npu"),
                                                                   {"ai-edge-litert": "2.3.0"}))
    assert [a.path for a in on_qc[0].artifacts] == ["model-fp32-b1.qualcomm-sm8650.tflite",
                                                    "model-fp32-b4.qualcomm-sm8650.tflite"]
    elsewhere = load_plan(m, "auto", "auto", None, DeviceCapabilities(None, None, ("cpu",), {"ai-edge-litert": "2"}))
    assert all(a.npu_target is None for at in elsewhere for a in at.artifacts)
    # This host has no such NPU: the compiled attempt is refused by LiteRT and the CPU artifact serves.
    with EdgeModel.load(res.path, signing_key.public_key(), capabilities=DeviceCapabilities(
            "qualcomm", "SM8650", ("cpu", "npu"), {"ai-edge-litert": "2.3.0"})) as model:
        assert model.info.accelerator == "cpu" and "qualcomm:SM8650 artifact" in model.info.fallback_reason
        rows = {"user_id": np.arange(3), "ctx": np.zeros((3, 4), np.float32)}
        assert model.scores(model.predict(rows)).shape == (3,)


def _sdk_present(vendor: str) -> bool:
    name = f"ai_edge_litert_sdk_{vendor}"
    if importlib.util.find_spec(name) is None:
        return False
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):
        return importlib.import_module(name).get_sdk_path() is not None


@pytest.mark.parametrize("target", [QC, MTK], ids=["qualcomm", "mediatek"])
def test_real_compilation_produces_an_artifact_or_says_exactly_why(stubbed, signing_key, target):
    res, _ = stubbed
    base = bytes(Package.open(res.path, signing_key.public_key()).stored_bytes("model-fp32-b4.tflite"))
    if _sdk_present(target.vendor):
        compiled = npu.compile_for(base, target)
        assert compiled.data[4:8] == b"TFL3" and compiled.data != base
        assert compiled.ops and compiled.npu_ops is not None
    else:
        with pytest.raises(ConversionError) as err:
            npu.compile_for(base, target)
        msg = str(err.value)
        assert msg.startswith(f"--npu {target.vendor}:{target.soc}: the {target.vendor} compiler needs the vendor SDK, "
                              "which is not installed here")
        assert ("libQnnHtp.so is missing" if target.vendor == "qualcomm" else "the NeuroPilot adapter is missing") \
            in msg
        assert "pip install 'edgerec[npu]'" in msg and "\n" not in msg


def test_cli_npu_refusals_are_one_line(tmp_path):
    _model().save(tmp_path / "m.keras")
    key = generate_keypair(tmp_path, "k")
    base = ["convert", str(tmp_path / "m.keras"), "--out", str(tmp_path / "o.edgepkg"), "--sign-key",
            str(key.private_path), "--format", "tflite", "--quantize", "none"]
    for extra, message in [
        (["--npu", "qualcomm:SM8650"], "--npu needs fixed-batch LiteRT artifacts: add --batch-buckets"),
        (["--npu", "apple:M4", "--batch-buckets", "1"], "--npu 'apple:M4': expected vendor:SOC"),
    ]:
        res = CliRunner().invoke(cli, [*base, *extra])
        assert res.exit_code == 1 and res.stderr.startswith("error:") and message in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
