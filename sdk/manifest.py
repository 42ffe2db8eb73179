"""The package manifest: what a package holds and how its model is fed.

The manifest is the one document the publisher signs. It records every file's
hash and size, so verifying its signature and then each hash covers the whole
package. Parsing is strict and names the offending field, because a manifest
comes from outside.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .choices import pick
from .errors import MissingEntryError, PackageError

Format = Literal["tflite", "ort", "onnx"]
Role = Literal["user", "item", "context"]
# The hardware an artifact (or a session) runs on; ``Accelerator`` adds "auto".
Device = Literal["cpu", "gpu", "npu"]
Batch = Literal["dynamic"] | int

SCHEMA_VERSION = 1
FORMATS: tuple[Format, ...] = ("tflite", "ort", "onnx")
ROLES: tuple[Role, ...] = ("user", "item", "context")
DTYPES = ("float16", "float32", "float64", "int8", "uint8", "int32", "int64", "bool", "string")
ACCELERATORS: tuple[Device, ...] = ("cpu", "gpu", "npu")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

Scalar = int | float | str | bool


def canonical_json(obj: Any) -> bytes:
    """The one byte form of a JSON document that gets signed and hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def check_name(name: object, what: str = "name") -> str:
    """A package or model name: lower case, digits, ``.``, ``_``, ``-``; no path parts."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise PackageError(
            f"{what}: {name!r} is not a valid name (lower-case letters, digits, '.', '_', '-', "
            "at most 64, starting with a letter or digit)"
        )
    return name


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output. ``None`` in ``shape`` is a dynamic dimension."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class ModelSignature:
    """The model's inputs and outputs, in the order the model declares them."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)


@dataclass(frozen=True)
class NpuTarget:
    """The SoC an artifact was compiled for ahead of time (``--npu vendor:SOC``); only that SoC runs it."""

    vendor: str  # "qualcomm", "mediatek"
    soc: str  # "SM8650", "MT6989"


@dataclass(frozen=True)
class Artifact:
    """One runnable model file in the package.

    ``accelerators`` are hints: where the artifact is meant to run. An artifact
    with an ``npu_target`` holds NPU bytecode for that SoC (accelerators
    ``("npu",)``, a fixed batch); readers that do not know the SoC skip it.
    """

    path: str
    format: Format
    sha256: str
    size: int
    precision: str = "fp32"
    batch: Batch = "dynamic"
    accelerators: tuple[Device, ...] = ("cpu",)
    runtime: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    npu_target: NpuTarget | None = None


@dataclass(frozen=True)
class FileEntry:
    """A non-model file: vocabulary, item table, warm-up samples, operator config."""

    path: str
    sha256: str
    size: int
    kind: str = "aux"


@dataclass(frozen=True)
class FeatureSpec:
    """How one model input is filled from a request.

    ``vocabulary`` names a vocabulary file in the package that maps raw ids
    (strings or sparse integers) to embedding rows; ``hash_bins`` hashes raw
    ids into that many rows instead (FarmHash Fingerprint64 of the id's text
    modulo ``hash_bins``: what Keras ``Hashing`` and TensorFlow's
    ``to_hash_bucket_fast`` compute); ``id_range`` bounds ids that reach the
    model as they are (inclusive ``[low, high]``).
    """

    input: str
    role: Role
    field: str
    vocabulary: str | None = None
    id_range: tuple[int, int] | None = None
    default: Scalar | None = None
    hash_bins: int | None = None


@dataclass(frozen=True)
class Manifest:
    """Everything a reader needs to trust, load and feed the package's model."""

    name: str
    version: int
    created: str
    signature: ModelSignature
    artifacts: tuple[Artifact, ...]
    features: tuple[FeatureSpec, ...] = ()
    files: tuple[FileEntry, ...] = ()
    producer: dict[str, str] = field(default_factory=dict)
    score_output: str | None = None
    item_table: str | None = None
    # The request fields that hold an item's id (candidates, item table) and a user's id.
    item_id_field: str = "item_id"
    user_id_field: str | None = None
    warmup: str | None = None
    eval_report: dict[str, Any] | None = None
    score_distribution: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    # -- lookups -------------------------------------------------------------

    def artifact(self, path: str) -> Artifact:
        for art in self.artifacts:
            if art.path == path:
                return art
        raise MissingEntryError(path)

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise MissingEntryError(path)

    def all_paths(self) -> dict[str, tuple[str, int]]:
        """Every file the manifest covers: path -> (sha256, size)."""
        out = {a.path: (a.sha256, a.size) for a in self.artifacts}
        out.update({f.path: (f.sha256, f.size) for f in self.files})
        return out

    @property
    def output_name(self) -> str:
        """The output that holds the score ranking uses."""
        return self.score_output or self.signature.outputs[0].name

    # -- (de)serialisation ---------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["signature"] = {
            "inputs": [_tensor_doc(t) for t in self.signature.inputs],
            "outputs": [_tensor_doc(t) for t in self.signature.outputs],
        }
        for feat in doc["features"]:
            if feat["id_range"] is not None:
                feat["id_range"] = list(feat["id_range"])
        for art in doc["artifacts"]:
            art["accelerators"] = list(art["accelerators"])
        # Fields added after the first readers shipped are written only when set: readers check the
        # manifest is canonical, so a package that does not use them stays readable by those readers.
        for key, container in (("user_id_field", [doc]), ("npu_target", doc["artifacts"])):
            for item in container:
                if item[key] is None:
                    del item[key]
        return doc

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PackageError(f"manifest.json: not valid JSON ({exc})") from exc
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: Any) -> Manifest:
        r = _Reader(doc, "manifest")
        schema = r.integer("schema")
        if schema != SCHEMA_VERSION:
            raise PackageError(f"manifest.schema: version {schema} is not supported")
        sig = r.sub("signature")
        signature = ModelSignature(
            inputs=tuple(_tensor(t) for t in sig.items("inputs")),
            outputs=tuple(_tensor(t) for t in sig.items("outputs")),
        )
        if not signature.inputs or not signature.outputs:
            raise PackageError("manifest.signature: needs at least one input and one output")
        artifacts = tuple(_artifact(a) for a in r.items("artifacts"))
        if not artifacts:
            raise PackageError("manifest.artifacts: the package holds no model")
        manifest = cls(
            name=check_name(r.text("name"), "manifest.name"),
            version=r.integer("version", minimum=0),
            created=r.text("created"),
            signature=signature,
            artifacts=artifacts,
            features=tuple(_feature(f) for f in r.items("features", default=[])),
            files=tuple(_file(f) for f in r.items("files", default=[])),
            producer={str(k): str(v) for k, v in r.mapping("producer", default={}).items()},
            score_output=r.opt_str("score_output"),
            item_table=r.opt_str("item_table"),
            item_id_field=r.opt_str("item_id_field") or "item_id",
            user_id_field=r.opt_str("user_id_field"),
            warmup=r.opt_str("warmup"),
            eval_report=r.opt_dict("eval_report"),
            score_distribution=r.opt_dict("score_distribution"),
            metadata=r.mapping("metadata", default={}),
            schema=schema,
        )
        _check_references(manifest)
        return manifest


def _tensor_doc(t: TensorSpec) -> dict[str, Any]:
    return {"name": t.name, "dtype": t.dtype, "shape": list(t.shape)}


def _check_references(m: Manifest) -> None:
    paths = m.all_paths()
    if len(paths) != len(m.artifacts) + len(m.files):
        raise PackageError("manifest: a path is listed twice")
    for p in paths:
        check_path(p, "manifest")
    input_names = {t.name for t in m.signature.inputs}
    output_names = {t.name for t in m.signature.outputs}
    if m.score_output is not None and m.score_output not in output_names:
        raise PackageError(f"manifest.score_output: {m.score_output!r} is not a model output")
    for i, feat in enumerate(m.features):
        if feat.input not in input_names:
            raise PackageError(f"manifest.features[{i}].input: {feat.input!r} is not a model input")
        if feat.vocabulary is not None and feat.vocabulary not in paths:
            raise PackageError(f"manifest.features[{i}].vocabulary: {feat.vocabulary!r} is not in files")
    for attr in ("item_table", "warmup"):
        ref = getattr(m, attr)
        if ref is not None and ref not in paths:
            raise PackageError(f"manifest.{attr}: {ref!r} is not in files")


def check_path(path: str, where: str) -> str:
    """Refuse absolute paths, ``..`` parts, backslashes and empty parts."""
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or any(p in ("", ".", "..") for p in parts)
        or ":" in parts[0]
    ):
        from .errors import UnsafeEntryError

        raise UnsafeEntryError(f"{where}: unsafe path {path!r}")
    return path


class _Reader:
    """Typed access to a JSON object that names the field in every error."""

    def __init__(self, doc: Any, where: str) -> None:
        if not isinstance(doc, dict):
            raise PackageError(f"{where}: expected an object")
        self.doc: dict[str, Any] = doc
        self.where = where

    def _get(self, key: str, default: Any = ...) -> Any:
        if key not in self.doc:
            if default is ...:
                raise PackageError(f"{self.where}.{key}: missing")
            return default
        return self.doc[key]

    def _fail(self, key: str, what: str) -> PackageError:
        return PackageError(f"{self.where}.{key}: expected {what}")

    def text(self, key: str) -> str:
        v = self._get(key)
        if not isinstance(v, str) or not v:
            raise self._fail(key, "a non-empty string")
        return v

    def opt_str(self, key: str) -> str | None:
        v = self._get(key, None)
        if v is not None and not isinstance(v, str):
            raise self._fail(key, "a string")
        return v

    def integer(self, key: str, minimum: int | None = None, default: Any = ...) -> int:
        v = self._get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or (minimum is not None and v < minimum):
            bound = f" >= {minimum}" if minimum is not None else ""
            raise self._fail(key, f"an integer{bound}")
        return v

    def items(self, key: str, default: Any = ...) -> list[Any]:
        v = self._get(key, default)
        if not isinstance(v, list):
            raise self._fail(key, "a list")
        return v

    def mapping(self, key: str, default: Any = ...) -> dict[str, Any]:
        v = self._get(key, default)
        if not isinstance(v, dict):
            raise self._fail(key, "an object")
        return v

    def opt_dict(self, key: str) -> dict[str, Any] | None:
        v = self._get(key, None)
        if v is not None and not isinstance(v, dict):
            raise self._fail(key, "an object")
        return v

    def sub(self, key: str) -> _Reader:
        return _Reader(self._get(key), f"{self.where}.{key}")

    def raw(self, key: str, default: Any = ...) -> Any:
        return self._get(key, default)


def _tensor(doc: Any) -> TensorSpec:
    r = _Reader(doc, "manifest.signature")
    name = r.text("name")
    r.where = f"manifest.signature[{name}]"
    dtype = r.text("dtype")
    if dtype not in DTYPES:
        raise PackageError(f"{r.where}.dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    shape = r.items("shape")
    if not all(d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 0) for d in shape):
        raise PackageError(f"{r.where}.shape: dimensions must be integers >= 0 or null")
    return TensorSpec(name, dtype, tuple(shape))


def _artifact(doc: Any) -> Artifact:
    r = _Reader(doc, "manifest.artifacts")
    path = r.text("path")
    r.where = f"manifest.artifacts[{path}]"
    fmt = pick(r.text("format"), FORMATS)
    if fmt is None:
        raise PackageError(f"{r.where}.format: {r.raw('format')!r} is not one of {', '.join(FORMATS)}")
    batch = r.raw("batch", "dynamic")
    if batch != "dynamic" and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise PackageError(f"{r.where}.batch: expected 'dynamic' or an integer >= 1")
    accels = [pick(a, ACCELERATORS) for a in r.items("accelerators", default=["cpu"])]
    devices = tuple(a for a in accels if a is not None)
    if not devices or len(devices) != len(accels):
        raise PackageError(f"{r.where}.accelerators: expected some of {', '.join(ACCELERATORS)}")
    target = None
    if r.raw("npu_target", None) is not None:
        t = _Reader(r.raw("npu_target"), f"{r.where}.npu_target")
        target = NpuTarget(t.text("vendor"), t.text("soc"))
        if fmt != "tflite" or "npu" not in accels or batch == "dynamic":
            raise PackageError(f"{r.where}.npu_target: needs format tflite, accelerators with npu, a fixed batch")
    return Artifact(
        path=path,
        format=fmt,
        sha256=_sha(r, "sha256"),
        size=r.integer("size", minimum=0),
        precision=r.text("precision"),
        batch=batch,
        accelerators=devices,
        runtime={str(k): str(v) for k, v in r.mapping("runtime", default={}).items()},
        extra=r.mapping("extra", default={}),
        npu_target=target,
    )


def _sha(r: _Reader, key: str) -> str:
    v = r.text(key)
    if not _HEX64.match(v):
        raise PackageError(f"{r.where}.{key}: expected 64 lower-case hex digits")
    return v


def _file(doc: Any) -> FileEntry:
    r = _Reader(doc, "manifest.files")
    path = r.text("path")
    r.where = f"manifest.files[{path}]"
    return FileEntry(path, _sha(r, "sha256"), r.integer("size", minimum=0), r.opt_str("kind") or "aux")


def _feature(doc: Any) -> FeatureSpec:
    r = _Reader(doc, "manifest.features")
    name = r.text("input")
    r.where = f"manifest.features[{name}]"
    role = pick(r.text("role"), ROLES)
    if role is None:
        raise PackageError(f"{r.where}.role: {r.raw('role')!r} is not one of {', '.join(ROLES)}")
    id_range = r.raw("id_range", None)
    if id_range is not None:
        ok = (
            isinstance(id_range, list)
            and len(id_range) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in id_range)
            and id_range[0] <= id_range[1]
        )
        if not ok:
            raise PackageError(f"{r.where}.id_range: expected [low, high] integers, low <= high")
        id_range = (id_range[0], id_range[1])
    default = r.raw("default", None)
    if default is not None and not isinstance(default, int | float | str | bool):
        raise PackageError(f"{r.where}.default: expected a scalar")
    hash_bins = r.raw("hash_bins", None)
    if hash_bins is not None:
        if isinstance(hash_bins, bool) or not isinstance(hash_bins, int) or hash_bins < 1:
            raise PackageError(f"{r.where}.hash_bins: expected an integer >= 1")
        if r.raw("vocabulary", None) is not None:
            raise PackageError(f"{r.where}: a feature has a vocabulary or hash_bins, not both")
    return FeatureSpec(
        input=name,
        role=role,
        field=r.opt_str("field") or name,
        vocabulary=r.opt_str("vocabulary"),
        id_range=id_range,
        default=default,
        hash_bins=hash_bins,
    )
