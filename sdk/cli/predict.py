"""``edgerec predict``: score an input file with a package."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import click
import numpy as np

from ..errors import EdgeRecError
from ._options import accelerator_option, load_model, model_options
from .output import print_json


def read_inputs(path: Path) -> dict[str, Any]:
    """Inputs from ``.npz`` (arrays by name) or ``.json`` (``{name: nested lists}``)."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        if path.suffix == ".json":
            doc = json.loads(path.read_text())
            if not isinstance(doc, dict):
                raise EdgeRecError(f"{path}: expected a JSON object of input name to values")
            return doc
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise EdgeRecError(f"{path}: cannot read inputs ({exc})") from exc
    raise EdgeRecError(f"{path}: unsupported input file type (use .npz or .json)")


@click.command()
@click.argument("pkg", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--input", "input_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Inputs as .npz or .json.")
@model_options
@accelerator_option
def predict(pkg: Path, input_path: Path, accelerator: str, **load: Any) -> None:
    """Score inputs and print the outputs as JSON."""
    inputs = read_inputs(input_path)
    with load_model(pkg, accelerator=accelerator, **load) as model:
        out = model.predict(inputs)
        info = model.info
    print_json({
        "model": info.name, "version": info.version, "backend": info.backend,
        "accelerator": info.accelerator, "outputs": {k: v.tolist() for k, v in out.items()},
    })
