"""PyTorch model files: TorchScript (``torch.jit.save``) and ``torch.export`` programs (``torch.export.save``).

Both are zip archives with a graph in them; which one a file is, is read from
its entries, not guessed from the suffix. A pickled checkpoint (``torch.save``
of a module or a ``state_dict``) is refused: it has no graph, and unpickling
it would run code from the file.

Example inputs (``--example-inputs FILE.npz``) give the ONNX export (and the
LiteRT conversion) its shapes and dtypes: one array per ``forward`` argument,
named like the argument, or saved in order (``np.savez(path, *arrays)``). A
``torch.export`` program saved with its example inputs needs no file. Its
batch dimension must be dynamic (``dynamic_shapes``): a program specialised to
one batch size cannot score other batch sizes.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError, UnsupportedModelError
from .sources import Source, make_torch_source, one_line
from .torch_litert import quiet

_SAVE_HINT = (
    "save a TorchScript (torch.jit.save(torch.jit.script(model), path)) or a torch.export program "
    "(torch.export.save(torch.export.export(model, args, dynamic_shapes=...), path))"
)


def file_kind(path: Path) -> str:
    """``"torchscript"`` or ``"export"``, from the archive's entries; refuses anything else by name."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsupportedModelError(
            f"{path}: not a TorchScript or torch.export file (not a zip archive: a legacy torch.save pickle, "
            f"or damaged); {_SAVE_HINT}"
        ) from exc
    parts = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if "archive_format" in parts or any(p.startswith("models/") and p.endswith(".json") for p in parts):
        return "export"
    if any(p.startswith("code/") for p in parts):
        return "torchscript"
    if "data.pkl" in parts:
        raise UnsupportedModelError(
            f"{path}: a torch.save checkpoint (a pickled module or state_dict, no graph), which edgerec does not "
            f"unpickle; {_SAVE_HINT}, or pass the module to edgerec.converter.convert(..., example_inputs=...)"
        )
    raise UnsupportedModelError(f"{path}: not a TorchScript or torch.export archive; {_SAVE_HINT}")


def load_torch_file(path: Path, example_file: Path | None) -> Source:
    """A Source for a TorchScript or ``torch.export`` file, exported to ONNX with a dynamic batch."""
    kind = file_kind(path)
    try:
        import torch
    except ImportError as exc:
        raise UnsupportedModelError(
            f"{path}: PyTorch models need torch: pip install 'edgerec[torch]' (install a CPU build of torch first)"
        ) from exc
    jit: Any = torch.jit  # untyped in torch's stubs
    if kind == "export":
        try:
            program = torch.export.load(str(path))
        except Exception as exc:  # torch raises many kinds for a damaged or newer-format archive
            raise UnsupportedModelError(f"{path}: not a readable torch.export program ({one_line(exc)})") from exc
        names = program_inputs(program, path)
        examples = read_examples(example_file, names) if example_file else saved_examples(program, names, path)
        module = program.module()
        # The TorchScript ONNX exporter traces; an exported program's module is traced first.
        with torch.no_grad(), quiet():
            try:
                traced = jit.trace(module, examples, check_trace=False)
            except Exception as exc:  # tracing raises what the graph raises
                raise UnsupportedModelError(
                    f"{path}: the program cannot be traced for ONNX export ({one_line(exc)})"
                ) from exc
        return make_torch_source(module, traced, examples, names, None, str(path), program)
    try:
        script = jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError and friends for damaged archives
        raise UnsupportedModelError(f"{path}: not a readable TorchScript model ({one_line(exc)})") from exc
    script.eval()
    names = [a.name for a in script.forward.schema.arguments[1:]]
    if example_file is None:
        raise UnsupportedModelError(
            f"{path}: TorchScript needs --example-inputs FILE.npz (one array per forward argument: "
            f"{', '.join(names)})"
        )
    return make_torch_source(script, script, read_examples(example_file, names), names, None, str(path))


def program_inputs(program: Any, path: Path) -> list[str]:
    """The user inputs of an exported program, checked to be tensors with a dynamic batch dimension."""
    user = list(program.graph_signature.user_inputs)
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    fixed = []
    for name in user:
        val = nodes[name].meta.get("val") if name in nodes else None
        shape = getattr(val, "shape", None)
        if shape is None:
            raise UnsupportedModelError(f"{path}: input {name!r} is not a tensor; edgerec feeds tensors only")
        if len(shape) and isinstance(shape[0], int):
            fixed.append(f"{name} ({int(shape[0])})")
    if fixed:
        dims = ", ".join(f"{n!r}: {{0: batch}}" for n in user)
        raise UnsupportedModelError(
            f"{path}: the program's batch dimension is fixed ({', '.join(fixed)}); export it with "
            f"batch = torch.export.Dim('batch'), dynamic_shapes={{{dims}}}"
        )
    return user


def saved_examples(program: Any, names: Sequence[str], path: Path) -> tuple[Any, ...]:
    """The example inputs saved with the program (torch.export keeps the ones it was exported with)."""
    saved = getattr(program, "example_inputs", None)
    args, kwargs = saved if saved is not None else ((), {})
    values = [*args, *[kwargs[k] for k in kwargs]]
    if len(values) != len(names):
        raise UnsupportedModelError(
            f"{path}: the program holds no example inputs; give --example-inputs FILE.npz "
            f"(one array per input: {', '.join(names)})"
        )
    return tuple(values)


def read_examples(file: Path, names: Sequence[str]) -> tuple[Any, ...]:
    """Example tensors from an .npz, in ``names`` order: arrays named like the inputs, or arr_0, arr_1, ..."""
    import torch

    try:
        with np.load(file, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError as exc:
        raise DataError(f"{file}: no such file") from exc
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{file}: not an .npz file of arrays ({one_line(exc)})") from exc
    keys = list(arrays)
    if set(keys) == set(names):
        ordered = [arrays[n] for n in names]
    elif len(keys) == len(names) and all(re.fullmatch(r"arr_\d+", k) for k in keys):
        ordered = [arrays[f"arr_{i}"] for i in range(len(keys))]
    else:
        raise DataError(
            f"{file}: arrays {', '.join(keys) or '(none)'} do not match the model's inputs {', '.join(names)} "
            "(name them like the inputs, or save them in order with np.savez(path, *arrays))"
        )
    rows = {a.shape[0] if a.ndim else 0 for a in ordered}
    if len(rows) != 1 or 0 in rows:
        raise DataError(f"{file}: every example array needs the same number of rows (batch), at least 1")
    # float64 is numpy's default, float32 PyTorch's: a model in float64 is very rare.
    return tuple(torch.as_tensor(a.astype(np.float32) if a.dtype == np.float64 else a) for a in ordered)
