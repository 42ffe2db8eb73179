"""Device capabilities and the artifact a device runs: NPU-compiled for its SoC first, else generic, else CPU.

Inference on a real NPU is out of reach on these machines (x86_64, no
Qualcomm or MediaTek NPU): the NPU attempt is exercised up to LiteRT's
refusal, and the fallback to the generic artifacts on the CPU is checked.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgerec.sdk import testing as demo
from edgerec.sdk.capabilities import DeviceCapabilities, detect_soc, device_capabilities
from edgerec.sdk.errors import EdgeRecError
from edgerec.sdk.manifest import Artifact, Manifest, NpuTarget
from edgerec.sdk.model import EdgeModel, load_plan
from edgerec.sdk.package import Package

RUNTIMES = {"ai-edge-litert": "2.3.0", "onnxruntime": "1.32.0"}


def caps(soc: str | None, accelerators=("cpu", "npu"), runtimes=RUNTIMES) -> DeviceCapabilities:
    vendor, model = soc.split(":") if soc else (None, None)
    return DeviceCapabilities(vendor, model, tuple(accelerators), dict(runtimes))


# -- detecting the SoC -------------------------------------------------------------------

def _tree(tmp_path, family=None, machine=None, compatible=None):
    if family is not None:
        (tmp_path / "sys/devices/soc0").mkdir(parents=True)
        (tmp_path / "sys/devices/soc0/family").write_text(family + "\n")
        (tmp_path / "sys/devices/soc0/machine").write_text((machine or "") + "\n")
    if compatible is not None:
        (tmp_path / "proc/device-tree").mkdir(parents=True)
        (tmp_path / "proc/device-tree/compatible").write_bytes("\0".join(compatible).encode() + b"\0")
    return tmp_path


@pytest.mark.parametrize(("files", "env", "expected"), [
    ({"family": "Snapdragon", "machine": "SM8650"}, {}, ("qualcomm", "SM8650")),
    ({"compatible": ["qcom,sm8550-mtp", "qcom,sm8550"]}, {}, ("qualcomm", "SM8550")),
    ({"compatible": ["google,coral", "mediatek,mt8188"]}, {}, ("mediatek", "MT8188")),
    ({"compatible": ["raspberrypi,5-model-b", "brcm,bcm2712"]}, {}, (None, None)),
    ({}, {}, (None, None)),
    ({"family": "Snapdragon", "machine": "SM8650"}, {"EDGEREC_SOC": "mediatek:mt6989"}, ("mediatek", "MT6989")),
    ({}, {"EDGEREC_SOC": "QTI:sm8750"}, ("qualcomm", "SM8750")),
    ({}, {"EDGEREC_SOC": "nvidia:orin"}, (None, None)),
])
def test_detect_soc(tmp_path, files, env, expected):
    assert detect_soc(_tree(tmp_path, **files), env) == expected


def test_this_machine_and_the_json_form():
    here = device_capabilities()
    assert "cpu" in here.accelerators
    assert here.runtimes["ai-edge-litert"] and here.runtimes["onnxruntime"]
    assert "CPUExecutionProvider" in here.ort_providers
    doc = here.to_dict()
    assert set(doc) == {"soc", "accelerators", "runtimes", "ort_providers", "machine", "system"}
    assert DeviceCapabilities.from_dict(doc) == here
    reported = DeviceCapabilities.from_dict({"soc": {"vendor": "qualcomm", "model": "sm8650"},
                                            "accelerators": ["cpu", "npu"], "runtimes": RUNTIMES, "extra": 1})
    assert reported.soc == "qualcomm:SM8650" and reported.can_run_target("qualcomm", "SM8650")


# -- choosing what to load (table-driven on reported capabilities) ----------------------

def _art(path, fmt="tflite", batch="dynamic", accelerators=("cpu",), target=None, precision="int8"):
    return Artifact(path, fmt, "0" * 64, 1, precision, batch, accelerators, npu_target=target)


QC, MTK = NpuTarget("qualcomm", "SM8650"), NpuTarget("mediatek", "MT6989")
MANIFEST = Manifest(
    "m", 1, "now", demo.ctr_signature(),
    (
        _art("dyn.tflite"),
        _art("b1.tflite", batch=1, accelerators=("gpu", "npu", "cpu")),
        _art("b16.tflite", batch=16, accelerators=("gpu", "npu", "cpu")),
        _art("dyn.ort", fmt="ort"),
        _art("b1.qualcomm-sm8650.tflite", batch=1, accelerators=("npu",), target=QC),
        _art("b16.qualcomm-sm8650.tflite", batch=16, accelerators=("npu",), target=QC),
        _art("b16.mediatek-mt6989.tflite", batch=16, accelerators=("npu",), target=MTK),
    ),
)
GENERIC_ACCEL = [("gpu", ["b1.tflite", "b16.tflite"]), ("npu", ["b1.tflite", "b16.tflite"])]
CPU = [("cpu", ["dyn.tflite"])]


@pytest.mark.parametrize(("device", "accelerator", "backend", "expected"), [
    # The device's own SoC: its compiled artifacts first, then the generic ones, then the CPU.
    (caps("qualcomm:SM8650"), "auto", "auto",
     [("npu", ["b1.qualcomm-sm8650.tflite", "b16.qualcomm-sm8650.tflite"]), *GENERIC_ACCEL, *CPU]),
    (caps("mediatek:MT6989"), "auto", "auto", [("npu", ["b16.mediatek-mt6989.tflite"]), *GENERIC_ACCEL, *CPU]),
    (caps("qualcomm:sm8650"), "npu", "auto",
     [("npu", ["b1.qualcomm-sm8650.tflite", "b16.qualcomm-sm8650.tflite"]), ("npu", ["b1.tflite", "b16.tflite"]),
      *CPU]),
    # Another SoC of the same vendor, no SoC, or no LiteRT: never a compiled artifact.
    (caps("qualcomm:SM8550"), "auto", "auto", [*GENERIC_ACCEL, *CPU]),
    (caps(None, ("cpu",)), "auto", "auto", [*GENERIC_ACCEL, *CPU]),
    (caps("qualcomm:SM8650", runtimes={"onnxruntime": "1.32.0"}), "auto", "auto", [*GENERIC_ACCEL, *CPU]),
    (None, "auto", "auto", [*GENERIC_ACCEL, *CPU]),
    # Asked for the CPU or the GPU, or for ONNX Runtime: the compiled artifacts are not for that.
    (caps("qualcomm:SM8650"), "cpu", "auto", CPU),
    (caps("qualcomm:SM8650"), "gpu", "auto", [("gpu", ["b1.tflite", "b16.tflite"]), *CPU]),
    (caps("qualcomm:SM8650"), "auto", "onnxruntime", [("cpu", ["dyn.ort"])]),
])
def test_load_plan(device, accelerator, backend, expected):
    plan = load_plan(MANIFEST, accelerator, backend, None, device)
    assert [(a.accelerator, [x.path for x in a.artifacts]) for a in plan] == expected
    assert plan[-1].accelerator == "cpu"  # always a CPU artifact to fall back to


def test_a_precision_choice_applies_to_compiled_artifacts_too():
    plan = load_plan(MANIFEST, "auto", "auto", "int8", caps("qualcomm:SM8650"))
    assert plan[0].artifacts[0].npu_target == QC
    with pytest.raises(EdgeRecError, match="no artifact for backend auto, precision fp32"):
        load_plan(MANIFEST, "auto", "auto", "fp32", caps("qualcomm:SM8650"))


# -- loading: the NPU attempt fails here, the generic CPU artifact serves -----------------

@pytest.fixture(scope="module")
def npu_pkg(ctr_weights, signing_key, tmp_path_factory):
    scratch = tmp_path_factory.mktemp("npu")
    b = demo.ctr_builder(ctr_weights, tflite_dir=scratch, buckets=(4,), onnx=False)
    # Stands in for a compiled artifact (no vendor compiler here): a device without that NPU must skip it.
    b.add_artifact("model.b4.qualcomm-sm8650.tflite", demo.keras_ctr_tflite(ctr_weights, scratch, 4), "tflite",
                   batch=4, accelerators=("npu",), npu_target=QC)
    return b.build(signing_key)


def test_the_manifest_records_the_target(npu_pkg, signing_key):
    m = Package.open(npu_pkg, signing_key.public_key()).manifest
    [compiled] = [a for a in m.artifacts if a.npu_target is not None]
    assert compiled.npu_target == QC and compiled.accelerators == ("npu",) and compiled.batch == 4
    assert all(a.npu_target is None for a in m.artifacts if a is not compiled)


@pytest.mark.parametrize("accelerator", ["auto", "npu"])
def test_compiled_artifact_that_cannot_load_falls_back_to_the_cpu(npu_pkg, signing_key, ctr_weights, accelerator):
    rows = {"user_id": np.array(["u3", "u9", "u1"]), "item_id": np.array([5, 0, 79]),
            "ctx": np.full((3, demo.N_CTX), 0.25, np.float32)}
    want = demo.ctr_reference(ctr_weights, np.array([3, 9, 1]), rows["item_id"], rows["ctx"]).ravel()
    with EdgeModel.load(npu_pkg, signing_key.public_key(), accelerator=accelerator,
                        capabilities=caps("qualcomm:SM8650")) as model:
        assert model.info.accelerator == "cpu" and model.info.npu_target is None
        assert "(qualcomm:SM8650 artifact)" in (model.info.fallback_reason or "")
        assert model.info.artifacts == ("model.tflite", "model.b4.tflite")  # the generic group
        np.testing.assert_allclose(model.scores(model.predict(rows)), want, atol=1e-5)
    with EdgeModel.load(npu_pkg, signing_key.public_key(), accelerator="cpu",
                        capabilities=caps("qualcomm:SM8650")) as model:
        assert model.info.fallback_reason is None and model.info.accelerator == "cpu"
