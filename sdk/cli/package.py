"""``edgerec package``: inspect, verify and encrypt packages."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from ..encryption import encrypt_package
from ..files import write_atomic
from ..keys import load_recipient_public_key
from ..manifest import check_name
from ._options import open_package, trust_options
from .output import console, fail, print_json, text_row


@click.group("package")
def package_group() -> None:
    """Inspect, verify and encrypt .edgepkg files."""


@package_group.command()
@click.argument("pkg", type=click.Path(dir_okay=False, path_type=Path))
@trust_options
@click.option("--json", "as_json", is_flag=True)
def inspect(pkg: Path, trusted_keys: tuple[Path, ...], as_json: bool) -> None:
    """Show a verified package's manifest."""
    p = open_package(pkg, trusted_keys)
    m = p.manifest
    if as_json:
        print_json({**m.to_dict(), "signer": p.signer, "encrypted": p.encrypted})
        return
    console.print(f"[bold]{escape(m.name)}[/] v{m.version}  created {escape(str(m.created))}  signer {p.signer[:16]}"
                  f"  {'encrypted' if p.encrypted else 'plaintext'}")
    t = Table("artifact", "format", "precision", "batch", "size", "accelerators", title="artifacts")
    for a in m.artifacts:
        t.add_row(*text_row(a.path, a.format, a.precision, a.batch, f"{a.size:,}", ",".join(a.accelerators)))
    console.print(t)
    t = Table("input", "dtype", "shape", "role", "field", "vocabulary / range", "default", title="inputs")
    feats = {f.input: f for f in m.features}
    for s in m.signature.inputs:
        f = feats.get(s.name)
        rng = (f.vocabulary or (str(list(f.id_range)) if f.id_range else "")) if f else ""
        t.add_row(*text_row(s.name, s.dtype, list(s.shape), f.role if f else "", f.field if f else "", rng,
                            "" if f is None or f.default is None else f.default))
    console.print(t)
    if m.eval_report:
        console.print("eval report:", m.eval_report)


@package_group.command()
@click.argument("pkg", type=click.Path(dir_okay=False, path_type=Path))
@trust_options
def verify(pkg: Path, trusted_keys: tuple[Path, ...]) -> None:
    """Check signature, sizes, paths and every hash. Exit 1 on any failure."""
    p = open_package(pkg, trusted_keys)
    console.print(f"ok: {p.manifest.name} v{p.manifest.version}, signed by {p.signer[:16]}, "
                  f"{len(p.manifest.artifacts)} artifact(s) and {len(p.manifest.files)} file(s) verified",
                  markup=False)


@package_group.command()
@click.argument("pkg", type=click.Path(dir_okay=False, path_type=Path))
@trust_options
@click.option("--recipient", "recipients", multiple=True, required=True, metavar="ID=PUBKEY",
              help="Recipient id and its X25519 public key file; repeatable.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def encrypt(pkg: Path, trusted_keys: tuple[Path, ...], recipients: tuple[str, ...], out: Path) -> None:
    """Encrypt every artifact; seal the data keys to each recipient (HPKE)."""
    pubs = {}
    for item in recipients:
        rid, sep, path = item.partition("=")
        if not sep or not rid or not path:
            fail(f"--recipient {item!r}: expected ID=PUBKEY_FILE")
        check_name(rid, "--recipient id")
        key = load_recipient_public_key(path)
        pubs[rid] = key
    enc = encrypt_package(open_package(pkg, trusted_keys), pubs)
    write_atomic(out, enc.data)
    console.print(f"wrote {out}: {len(enc.data_keys)} artifact(s) encrypted for {len(pubs)} recipient(s)",
                  markup=False)
