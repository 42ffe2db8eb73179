"""LiteRT artifacts from PyTorch sources, through ``litert-torch``.

litert-torch (0.10) converts fixed shapes only: its JAX lowering fails on a
symbolic batch dimension (google-ai-edge/litert-torch#870; measured here:
even one ``nn.Linear`` fails). So the model is converted at the example
inputs' batch size, and the artifact is declared batch-dynamic only after it
has run at two other batch sizes and matched the PyTorch model; a graph that
bakes its batch size in (a ``reshape`` to a constant shape) is refused with
what to do instead. Fixed-batch buckets are converted at their own size.

Precisions: ``fp32`` and ``int8-dynamic`` (ai-edge-quantizer's dynamic
recipe: int8 weights with a scale per channel, embedding tables included,
float activations). Ids become int32 (litert-torch's default; the SDK feeds
what the graph wants, range-checked).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import inspect
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from edgerec.sdk.manifest import Format, TensorSpec

from .build import Built
from .errors import ConversionError, UnsupportedOpError
from .sources import Source, one_line

Arrays = dict[str, npt.NDArray[Any]]
PRECISIONS = ("fp32", "int8-dynamic")
_TOLERANCE = 1e-4


def available() -> bool:
    """Whether litert-torch imports here."""
    try:
        importlib.metadata.version("litert-torch")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def exportable(src: Source) -> Any:
    """An ``nn.Module`` torch.export can trace: the module, an exported program's module, or a TorchScript
    model turned into an exported program (torch's TorchScript converter)."""
    import torch

    if src.torch_program is not None:
        return src.torch_program.module()
    module = src.torch_module
    if isinstance(module, torch.jit.ScriptModule):
        try:
            from torch._export.converter import TS2EPConverter  # the one TorchScript -> torch.export path

            return TS2EPConverter(module, src.torch_examples or ()).convert().module()
        except Exception as exc:  # the converter raises for unsupported TorchScript constructs
            raise UnsupportedOpError(
                f"{src.label}: torch cannot turn this TorchScript model into a torch.export program for LiteRT "
                f"({one_line(exc)}); save it with torch.export.save, or use --format ort"
            ) from exc
    return module


class TorchLiteBuilder:
    """LiteRT artifacts of a torch Source, cached per batch size."""

    def __init__(self, src: Source, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> None:
        if src.torch_examples is None:
            raise ConversionError(f"{src.label}: LiteRT conversion needs example inputs")
        self.src = src
        self.names = [s.name for s in inputs]
        self.outputs = [s.name for s in outputs]
        self.examples = src.torch_examples
        self._module: Any = None
        self._float: dict[int | None, bytes] = {}
        for name in [*self.names, *self.outputs]:
            if not name.isidentifier():
                raise ConversionError(
                    f"{src.label}: LiteRT signatures need names that are identifiers; {name!r} is not "
                    "(rename it, or use --format ort)"
                )

    def tflite(
        self, precision: str, calibration: Arrays | None = None, batch: int | None = None,
        advance: Callable[[int], None] | None = None,
    ) -> Built:
        if precision not in PRECISIONS:
            raise ConversionError(
                f"tflite {precision} from PyTorch: litert-torch artifacts come in {', '.join(PRECISIONS)}; "
                "use one of those, or --format ort"
            )
        data = self.float_model(batch)
        if precision == "int8-dynamic":
            data = quantize_dynamic(data)
        extra = {"converter": f"litert-torch {importlib.metadata.version('litert-torch')}"}
        return Built("tflite", precision, data, batch, extra)

    def float_model(self, batch: int | None) -> bytes:
        if batch not in self._float:
            rows = int(self.examples[0].shape[0])
            data = self._convert(self._rows(batch or rows))
            if batch is None:
                self._check_resizes(data, rows)
            self._float[batch] = data
        return self._float[batch]

    def _rows(self, n: int) -> tuple[Any, ...]:
        idx = np.arange(n) % int(self.examples[0].shape[0])
        return tuple(x[idx] for x in self.examples)

    def _convert(self, examples: tuple[Any, ...]) -> bytes:
        os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
        with quiet():
            import litert_torch

            if self._module is None:
                self._module = _named(exportable(self.src), self.names, self.outputs)
            try:
                kwargs = dict(zip(self.names, examples, strict=True))
                data = bytes(litert_torch.convert(self._module, sample_kwargs=kwargs).model_content())
            except Exception as exc:  # litert-torch raises from torch.export, JAX lowering and the MLIR converter
                raise UnsupportedOpError(
                    f"{self.src.label}: litert-torch cannot convert the model ({one_line(exc)}); use --format ort"
                ) from exc
        self._check_names(data)
        return data

    def _check_names(self, data: bytes) -> None:
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(model_content=data).get_signature_runner()
        got_in, got_out = sorted(runner.get_input_details()), sorted(runner.get_output_details())
        if got_in != sorted(self.names) or got_out != sorted(self.outputs):
            raise ConversionError(
                f"{self.src.label}: litert-torch named the signature {got_in} -> {got_out}, "
                f"expected {sorted(self.names)} -> {sorted(self.outputs)}"
            )

    def _check_resizes(self, data: bytes, rows: int) -> None:
        """Run the artifact at batch sizes other than the one it was converted at, against PyTorch."""
        import torch
        from ai_edge_litert.interpreter import Interpreter

        for n in sorted({1, rows + 3} - {rows}):
            examples = self._rows(n)
            try:
                with torch.no_grad():
                    want = self.src.torch_module(*examples)
                want = want if isinstance(want, tuple | list) else (want,)
                runner = Interpreter(model_content=data).get_signature_runner()
                feed = {k: v.numpy().astype(np.int32 if v.dtype == torch.int64 else v.numpy().dtype)
                        for k, v in zip(self.names, examples, strict=True)}
                got = runner(**feed)
                pairs = [(np.asarray(got[o]), w.numpy()) for o, w in zip(self.outputs, want, strict=True)]
                if any(g.shape != w.shape for g, w in pairs):
                    shapes = [g.shape for g, _ in pairs], [w.shape for _, w in pairs]
                    raise ValueError(f"output shapes {shapes[0]}, expected {shapes[1]}")
                diff = max(float(np.max(np.abs(g - w))) for g, w in pairs)
            except Exception as exc:  # LiteRT raises ValueError/RuntimeError, torch whatever the model raises
                diff, why = float("inf"), one_line(exc)
            else:
                why = f"max |diff| {diff:.3g}"
            if not diff <= _TOLERANCE:
                raise UnsupportedOpError(
                    f"{self.src.label}: the LiteRT graph litert-torch made for batch {rows} does not run at "
                    f"batch {n} ({why}); litert-torch converts fixed shapes only (litert-torch#870): "
                    "use --format ort, or a model without batch-size constants (e.g. reshape(-1, ...))"
                )


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No warnings and no log lines below ERROR from torch, JAX and litert-torch (the report is the output)."""
    loggers = [logging.getLogger(n) for n in ("", "torch", "jax", "absl", "litert_torch")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def quantize_dynamic(data: bytes) -> bytes:
    """int8 weights (per channel; embedding tables too), float activations: ai-edge-quantizer."""
    from ai_edge_quantizer import quantizer, recipe

    try:
        q = quantizer.Quantizer(bytearray(data), recipe.dynamic_wi8_afp32())
        return bytes(q.quantize(enable_progress_report=False).quantized_model)
    except Exception as exc:  # the quantizer raises plain Exceptions for unsupported graphs
        raise ConversionError(f"LiteRT int8-dynamic (ai-edge-quantizer) failed: {one_line(exc)}") from exc


def _named(inner: Any, names: list[str], outputs: list[str]) -> Any:
    import torch

    class Named(torch.nn.Module):
        """``inner`` with forward arguments and a dict of outputs named as the package names them,
        which become the LiteRT signature's names."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = inner
            params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]
            self.signature = inspect.Signature(params)

            def forward(*args: Any, **kwargs: Any) -> dict[str, Any]:
                bound = self.signature.bind(*args, **kwargs)
                out = self.inner(*[bound.arguments[n] for n in names])
                values = out if isinstance(out, tuple | list) else (out,)
                return dict(zip(outputs, values, strict=True))

            forward.__signature__ = self.signature  # type: ignore[attr-defined]  # what torch.export binds by
            self.forward = forward

    return Named()


def restrict_plan(
    plan: dict[Format, tuple[str, ...]], quantize: str, prune: float,
) -> dict[Format, tuple[str, ...]]:
    """The tflite precisions a PyTorch source can have: all of them asked for, or (auto) those there are."""
    if prune:
        raise ConversionError(
            "--prune with LiteRT from PyTorch: pruning applies to the exported ONNX graph only; use --format ort"
        )
    wanted = plan["tflite"]
    have = tuple(p for p in wanted if p in PRECISIONS)
    if quantize != "auto" and have != wanted:
        raise ConversionError(
            f"--quantize {quantize}: LiteRT artifacts from PyTorch come in {', '.join(PRECISIONS)} "
            "(--quantize none or dynamic); use one of those, or --format ort"
        )
    return {**plan, "tflite": have}
