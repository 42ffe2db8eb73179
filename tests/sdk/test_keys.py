"""Key files: private keys are refused when anyone but their owner may read or write them."""

from __future__ import annotations

import pytest

from edgerec.sdk.errors import KeyFileError
from edgerec.sdk.keys import (
    generate_keypair,
    load_recipient_key,
    load_signing_key,
    load_verify_key,
    read_private_file,
    read_secret_text,
)
from edgerec.sdk.user_keys import ensure_user_key, read_user_key


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o660, 0o644, 0o666])
def test_private_key_open_to_group_or_others_is_refused(tmp_path, mode):
    g = generate_keypair(tmp_path, "signer")
    g.private_path.chmod(mode)
    with pytest.raises(KeyFileError, match=f"accessible by group or others \\(mode {mode:04o}\\); run: chmod 600"):
        load_signing_key(g.private_path)
    assert load_verify_key(g.public_path)  # public keys may be world-readable


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_private_key_loads(tmp_path, mode):
    g = generate_keypair(tmp_path, "node", "x25519")
    g.private_path.chmod(mode)
    assert load_recipient_key(g.private_path).public_key()


def test_secret_files_in_general(tmp_path):
    secret = tmp_path / "kek.key"
    secret.write_bytes(b"k" * 32)
    secret.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        read_private_file(secret)
    secret.chmod(0o600)
    assert read_private_file(secret) == b"k" * 32
    with pytest.raises(KeyFileError, match="cannot read"):
        read_private_file(tmp_path / "missing.key")


def test_token_files_are_owner_only_text(tmp_path):
    token = tmp_path / "control.token"
    token.write_text("tok-0123456789abcdef\n")
    token.chmod(0o644)
    with pytest.raises(KeyFileError) as err:
        read_secret_text(token, "control token")
    assert str(err.value) == (f"{token}: control token file is accessible by group or others (mode 0644); "
                              f"run: chmod 600 {token}")
    token.chmod(0o600)
    assert read_secret_text(token, "control token") == "tok-0123456789abcdef"
    token.write_text(" \n")
    with pytest.raises(KeyFileError, match="the control token file is empty"):
        read_secret_text(token, "control token")
    token.write_bytes(b"\xff\xfe")
    with pytest.raises(KeyFileError, match="the control token file is not text"):
        read_secret_text(token, "control token")


def test_a_user_key_file_group_or_others_may_read_is_refused(tmp_path):
    path = tmp_path / "keys" / "user.key"
    key = ensure_user_key(path)
    assert (path.stat().st_mode & 0o777) == 0o600 and read_user_key(path) == key
    path.chmod(0o644)
    with pytest.raises(KeyFileError) as err:
        read_user_key(path)
    assert str(err.value).startswith(f"{path}: user key file is accessible by group or others (mode 0644)")
    assert "\n" not in str(err.value)


def test_cli_refuses_a_loose_recipient_key_in_one_line(tmp_path):
    from click.testing import CliRunner

    from edgerec.sdk.cli.main import cli

    g = generate_keypair(tmp_path, "node", "x25519")
    g.private_path.chmod(0o644)
    pub = generate_keypair(tmp_path, "publisher")
    pkg, inputs = tmp_path / "x.edgepkg", tmp_path / "in.json"
    pkg.write_bytes(b"not a package")
    inputs.write_text("{}")
    result = CliRunner().invoke(cli, ["predict", str(pkg), "--input", str(inputs), "-k", str(pub.public_path),
                                      "--recipient-key", str(g.private_path), "--recipient-id", "node-1"])
    assert result.exit_code == 1
    assert "chmod 600" in result.output and len(result.output.strip().splitlines()) == 1
