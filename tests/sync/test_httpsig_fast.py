"""The direct verification of RequestSigner's form decides every request as ``http_message_signatures`` does."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgerec.sync.protocol.errors import AuthenticationError
from edgerec.sync.protocol.httpsig import RequestSigner, RequestVerifier, VerifiedRequest

NODE, OTHER = "n0123456789abcdef", "n00000000000000ff"
KEYS = {NODE: Ed25519PrivateKey.generate(), OTHER: Ed25519PrivateKey.generate()}
URL = "http://edgerec/api/v1/node/checkin"
BODY = b'{"report_id": "r-0001", "kind": "status"}'


def lookup(kid: str) -> Ed25519PublicKey | None:
    key = KEYS.get(kid)
    return key.public_key() if key else None


@dataclass
class Req:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes


def signed(method: str = "POST", url: str = URL, body: bytes = BODY, key: str = NODE, **kw: object) -> Req:
    headers = RequestSigner(key, KEYS[key]).sign(method, url, body or None, {"Content-Type": "application/json"},
                                                 **kw)  # type: ignore[arg-type]
    return Req(method, url, headers, body)


def hand_signed(params: str, lines: list[str], headers: dict[str, str], key: str = NODE,
                method: str = "POST", body: bytes = BODY) -> Req:
    """A valid RFC 9421 signature in a form RequestSigner does not write (built here, signed with the node key)."""
    base = "\n".join([*lines, f'"@signature-params": {params}']).encode()
    sig = base64.b64encode(KEYS[key].sign(base)).decode()
    return Req(method, URL, {**headers, "Signature-Input": f"node={params}", "Signature": f"node=:{sig}:"}, body)


def now() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp())


def other_forms() -> list[Req]:
    digest = "sha-256=:" + base64.b64encode(hashlib.sha256(BODY).digest()).decode() + ":"
    digest512 = "sha-512=:" + base64.b64encode(hashlib.sha512(BODY).digest()).decode() + ":"
    lines = ['"@method": POST', '"@path": /api/v1/node/checkin', '"@query": ?']
    comps = '("@method" "@path" "@query" "content-digest")'
    t = now()
    return [
        # parameters in another order
        hand_signed(f'{comps};keyid="{NODE}";created={t};nonce="n1";alg="ed25519";tag="edgerec-node"',
                    [*lines, f'"content-digest": {digest}'], {"Content-Digest": digest}),
        # a SHA-512 digest
        hand_signed(f'{comps};created={t};keyid="{NODE}";alg="ed25519";nonce="n2";tag="edgerec-node"',
                    [*lines, f'"content-digest": {digest512}'], {"Content-Digest": digest512}),
        # no alg parameter
        hand_signed(f'{comps};created={t};keyid="{NODE}";nonce="n3";tag="edgerec-node"',
                    [*lines, f'"content-digest": {digest}'], {"Content-Digest": digest}),
        # an expires parameter
        hand_signed(f'{comps};created={t};expires={t + 60};keyid="{NODE}";alg="ed25519";nonce="n4";'
                    'tag="edgerec-node"', [*lines, f'"content-digest": {digest}'], {"Content-Digest": digest}),
        # no nonce: refused (the service needs one)
        hand_signed(f'{comps};created={t};keyid="{NODE}";alg="ed25519";tag="edgerec-node"',
                    [*lines, f'"content-digest": {digest}'], {"Content-Digest": digest}),
    ]


def changed(r: Req, **kw: object) -> Req:
    return Req(**{**r.__dict__, **kw})  # type: ignore[arg-type]


def with_header(r: Req, name: str, value: str | None) -> Req:
    headers = {k: v for k, v in r.headers.items() if k.lower() != name.lower()}
    if value is not None:
        headers[name] = value
    return changed(r, headers=headers)


def edit(r: Req, name: str, fn: Callable[[str], str]) -> Req:
    return with_header(r, name, fn(r.headers[name]))


def cases() -> list[tuple[str, Req]]:
    ok, get = signed(), signed("GET", "http://edgerec/api/v1/node/envelopes/ctr/1?x=1&y=%20", b"")
    other = signed(key=OTHER)
    t = dt.datetime.now(dt.UTC)
    out = [
        ("valid", ok),
        ("valid GET with a query", get),
        ("header names in lower case", changed(ok, headers={k.lower(): v for k, v in ok.headers.items()})),
        ("another method", changed(ok, method="PUT")),
        ("another path", changed(ok, url="http://edgerec/api/v1/node/reports")),
        ("a query added", changed(ok, url=URL + "?a=1")),
        ("another query", changed(get, url=get.url.replace("x=1", "x=2"))),
        ("another body", changed(ok, body=BODY + b" ")),
        ("no body", changed(ok, body=b"")),
        ("digest of another body", with_header(changed(ok, body=b"{}"), "Content-Digest",
                                               "sha-256=:" + base64.b64encode(hashlib.sha256(b"{}").digest())
                                               .decode() + ":")),
        ("no digest", with_header(ok, "Content-Digest", None)),
        ("a body and no signed digest", changed(get, body=b"{}")),
        ("a digest on a signature that covers none", with_header(get, "Content-Digest",
                                                                 ok.headers["Content-Digest"])),
        ("created moved", edit(ok, "Signature-Input", lambda v: v.replace(";created=", ";created=1"))),
        ("created with a leading zero", edit(ok, "Signature-Input", lambda v: v.replace(";created=", ";created=0"))),
        ("keyid of another node", edit(ok, "Signature-Input", lambda v: v.replace(NODE, OTHER))),
        ("unknown keyid", edit(ok, "Signature-Input", lambda v: v.replace(NODE, "n0000000000000001"))),
        ("keyid not a node id", edit(ok, "Signature-Input", lambda v: v.replace(NODE, "Bad-Id"))),
        ("another tag", edit(ok, "Signature-Input", lambda v: v.replace("edgerec-node", "other"))),
        ("another alg", edit(ok, "Signature-Input", lambda v: v.replace("ed25519", "hmac-sha256"))),
        ("an extra parameter", edit(ok, "Signature-Input", lambda v: v + ';foo="1"')),
        ("a component dropped", edit(ok, "Signature-Input", lambda v: v.replace(' "@query"', ""))),
        ("another label", edit(edit(ok, "Signature-Input", lambda v: "sig" + v[4:]), "Signature",
                               lambda v: "sig" + v[4:])),
        ("two signatures", edit(edit(ok, "Signature-Input", lambda v: v + ", " + other.headers["Signature-Input"]
                                     .replace("node=", "second=")), "Signature",
                                lambda v: v + ", " + other.headers["Signature"].replace("node=", "second="))),
        ("signature of another request", with_header(ok, "Signature", signed().headers["Signature"])),
        ("signature bytes flipped", edit(ok, "Signature", lambda v: v[:10] + ("A" if v[10] != "A" else "B")
                                         + v[11:])),
        ("signature truncated", edit(ok, "Signature", lambda v: v[:-6] + "==:")),
        ("signature with spaces", edit(ok, "Signature", lambda v: " " + v)),
        ("no signature", with_header(ok, "Signature", None)),
        ("no signature input", with_header(ok, "Signature-Input", None)),
        ("signed by another node's key", with_header(
            ok, "Signature", signed(key=OTHER, nonce="x").headers["Signature"])),
        ("too old", signed(created=t - dt.timedelta(seconds=400))),
        ("just in the window", signed(created=t - dt.timedelta(seconds=320))),
        ("in the future", signed(created=t + dt.timedelta(seconds=60))),
        ("a long nonce", signed(nonce="x" * 65)),
        ("a nonce with other characters", signed(nonce="a.b~c")),
        ("lower-case method", changed(ok, method="post")),
    ]
    out += [(f"another form {i}", r) for i, r in enumerate(other_forms())]
    return out


# what the library accepts of the cases above (labels are not signed; the tag is)
ACCEPTED = {"valid", "valid GET with a query", "header names in lower case", "just in the window", "lower-case method",
            "created with a leading zero", "another label", "signature with spaces", "a nonce with other characters"}


def decide(fn: Callable[[], VerifiedRequest | None]) -> VerifiedRequest | str | None:
    try:
        return fn()
    except AuthenticationError:
        return "refused"


@pytest.mark.parametrize("name", [c[0] for c in cases()])
def test_both_paths_decide_alike(name: str) -> None:
    req = dict(cases())[name]  # made now: the cases carry times relative to the clock
    verifier = RequestVerifier(300, 30)
    fields = {k.lower(): v for k, v in req.headers.items()}
    auto = decide(lambda: verifier.verify(req.method, req.url, req.headers, req.body, lookup))
    general = decide(lambda: verifier.verify_general(req.method, req.url, fields, req.body, lookup))
    assert auto == general
    expect_ok = name in ACCEPTED or (name.startswith("another form") and not name.endswith("4"))
    assert isinstance(auto, VerifiedRequest) == expect_ok, auto
    if expect_ok:
        assert isinstance(auto, VerifiedRequest) and auto.key_id == NODE


def test_requests_in_the_signers_form_take_the_direct_path() -> None:
    """Not a vacuous comparison: the signer's own requests are decided without the library."""
    verifier = RequestVerifier(300, 30)
    for req in (signed(), signed("GET", "http://edgerec/api/v1/node/assignments", b"")):
        fields = {k.lower(): v for k, v in req.headers.items()}
        fast = verifier.verify_canonical(req.method, req.url, fields, req.body, lookup)
        assert fast is not None and fast == verifier.verify_general(req.method, req.url, fields, req.body, lookup)
    bad = signed()
    fields = {k.lower(): v for k, v in bad.headers.items()}
    with pytest.raises(AuthenticationError, match="does not verify"):
        verifier.verify_canonical("POST", URL + "?x=1", fields, bad.body, lookup)
    with pytest.raises(AuthenticationError, match="Content-Digest"):
        verifier.verify_canonical("POST", URL, fields, bad.body + b" ", lookup)
    for req in other_forms():
        fields = {k.lower(): v for k, v in req.headers.items()}
        assert verifier.verify_canonical(req.method, req.url, fields, req.body, lookup) is None
