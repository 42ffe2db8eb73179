"""Assignment checks without IO: signature, addressee, expiry, replay, downgrade (table-driven)."""

from __future__ import annotations

import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgerec.sdk.keys import key_id
from edgerec.sync.protocol.assignments import Accepted, Assignment, sign_assignment, verify_assignment
from edgerec.sync.protocol.errors import (
    AssignmentError,
    AssignmentExpiredError,
    AssignmentReplayError,
    AssignmentSignatureError,
    DowngradeError,
)

KEY = Ed25519PrivateKey.generate()
TRUSTED = {key_id(KEY.public_key()): KEY.public_key()}
NOW = int(time.time())


def make(**changes) -> Assignment:
    base = dict(node="n1", model="ctr", version=3, channel="stable", target="stable/ctr/3.edgepkg", serial=10,
                rollback=False, issued=NOW, expires=NOW + 600)
    return Assignment(**{**base, **changes})


def test_a_good_assignment_is_accepted():
    a = make()
    assert verify_assignment(sign_assignment(a, KEY), TRUSTED, "n1", Accepted(9, 2), 2, NOW) == a
    # The same assignment again (a re-signed refresh) is fine.
    assert verify_assignment(sign_assignment(a, KEY), TRUSTED, "n1", Accepted(10, 3), 3, NOW) == a


@pytest.mark.parametrize(
    ("doc", "node", "accepted", "installed", "error"),
    [
        (sign_assignment(make(), Ed25519PrivateKey.generate()), "n1", None, None, AssignmentSignatureError),
        (sign_assignment(make(), KEY), "n2", None, None, AssignmentSignatureError),
        (sign_assignment(make(expires=NOW - 1), KEY), "n1", None, None, AssignmentExpiredError),
        (sign_assignment(make(serial=5), KEY), "n1", Accepted(9, 2), None, AssignmentReplayError),
        (sign_assignment(make(version=4), KEY), "n1", Accepted(10, 3), None, AssignmentReplayError),
        (sign_assignment(make(version=2), KEY), "n1", None, 3, DowngradeError),
        (b"{not json", "n1", None, None, AssignmentError),
    ],
    ids=["untrusted-key", "other-node", "expired", "older-serial", "same-serial-other-version", "downgrade",
         "malformed"],
)
def test_bad_assignments_are_refused(doc, node, accepted, installed, error):
    with pytest.raises(error):
        verify_assignment(doc, TRUSTED, node, accepted, installed, NOW)


def test_a_signed_rollback_may_go_down():
    a = make(version=1, rollback=True, serial=11)
    assert verify_assignment(sign_assignment(a, KEY), TRUSTED, "n1", Accepted(10, 3), 3, NOW).version == 1


def test_a_changed_field_breaks_the_signature():
    doc = json.loads(sign_assignment(make(version=2), KEY))
    doc["signed"]["rollback"] = True  # turn a downgrade into a "rollback"
    with pytest.raises(AssignmentSignatureError):
        verify_assignment(json.dumps(doc).encode(), TRUSTED, "n1", None, 3, NOW)


EXP = {"name": "ab", "salt": "s1", "variants": [{"name": "control", "version": 3, "weight": 1.0},
                                                 {"name": "new", "version": 4, "weight": 1.0}]}


def test_experiments_travel_signed_and_are_left_out_when_empty():
    from edgerec.sync.protocol.assignments import Extra

    plain = make()
    assert "experiments" not in plain.to_dict() and "extras" not in plain.to_dict()
    a = make(experiments=(EXP,), extras=(Extra(4, "stable/ctr/4.edgepkg"),))
    got = verify_assignment(sign_assignment(a, KEY), TRUSTED, "n1", None, None, NOW)
    assert got.experiments == (EXP,) and got.extras == (Extra(4, "stable/ctr/4.edgepkg"),)
    doc = json.loads(sign_assignment(a, KEY))
    doc["signed"]["experiments"][0]["variants"][1]["weight"] = 99.0  # a tampered split
    with pytest.raises(AssignmentSignatureError):
        verify_assignment(json.dumps(doc).encode(), TRUSTED, "n1", None, None, NOW)


@pytest.mark.parametrize("bad", [
    {"experiments": "ab"}, {"experiments": [{"name": "ab"}]}, {"extras": [{"version": True, "target": "t"}]},
    {"experiments": [{**EXP, "variants": [{"name": "a", "version": "3", "weight": 1}]}]},
])
def test_malformed_experiments_are_refused(bad):
    doc = {**make().to_dict(), **bad}
    with pytest.raises(AssignmentError):
        Assignment.from_dict(doc)


def test_the_repo_url_travels_signed_and_is_left_out_when_empty():
    assert "repo_url" not in make().to_dict()
    a = make(repo_url="https://cdn.example.com/fleet")
    assert verify_assignment(sign_assignment(a, KEY), TRUSTED, "n1", None, None, NOW).repo_url == a.repo_url
    api = make(repo_url="/repository")  # the service's own API
    assert verify_assignment(sign_assignment(api, KEY), TRUSTED, "n1", None, None, NOW).repo_url == "/repository"
    doc = json.loads(sign_assignment(a, KEY))
    doc["signed"]["repo_url"] = "https://evil.example.com"  # a tampered origin
    with pytest.raises(AssignmentSignatureError):
        verify_assignment(json.dumps(doc).encode(), TRUSTED, "n1", None, None, NOW)
    unsigned = json.loads(sign_assignment(make(), KEY))
    unsigned["signed"]["repo_url"] = "https://evil.example.com"  # added to a document signed without one
    with pytest.raises(AssignmentSignatureError):
        verify_assignment(json.dumps(unsigned).encode(), TRUSTED, "n1", None, None, NOW)


@pytest.mark.parametrize("bad", ["ftp://cdn", "https://user:pw@cdn.example.com", "https://cdn/?q=1", "/other",
                                 "https://cdn.example.com/\nx", 7, "https://" + "a" * 2050])
def test_a_malformed_repo_url_is_refused(bad):
    with pytest.raises(AssignmentError, match="repo_url"):
        Assignment.from_dict({**make().to_dict(), "repo_url": bad})


def _signed_with(**fields) -> bytes:
    """An assignment signed by the trusted key with ``fields`` added to its signed part (a newer service)."""
    import base64

    from edgerec.sdk.manifest import canonical_json

    signed = {**make().to_dict(), **fields}
    sig = {"keyid": key_id(KEY.public_key()), "sig": base64.b64encode(KEY.sign(canonical_json(signed))).decode()}
    return canonical_json({"signed": signed, "signatures": [sig]})


def test_fields_from_a_newer_service_are_ignored_unless_critical():
    got = verify_assignment(_signed_with(schedule={"window": "02:00-04:00"}), TRUSTED, "n1", None, None, NOW)
    assert got == make()  # what this node knows, unchanged
    # A field the node must not ignore is named critical: the node refuses rather than run without it.
    with pytest.raises(AssignmentError, match=r"needs fields this node does not know \('schedule'\); upgrade"):
        verify_assignment(_signed_with(schedule={}, critical=["schedule"]), TRUSTED, "n1", None, None, NOW)
    # Critical fields the node knows are fine.
    assert verify_assignment(_signed_with(critical=["version", "rollback"]), TRUSTED, "n1", None, None,
                             NOW).version == 3
    # An unsigned addition still breaks the signature: ignoring happens only after it verified.
    doc = json.loads(sign_assignment(make(), KEY))
    doc["signed"]["schedule"] = {}
    with pytest.raises(AssignmentSignatureError):
        verify_assignment(json.dumps(doc).encode(), TRUSTED, "n1", None, None, NOW)


@pytest.mark.parametrize("bad", ["schedule", [1], ["x"] * 65])
def test_a_malformed_critical_list_is_refused(bad):
    with pytest.raises(AssignmentError, match="critical"):
        Assignment.from_dict({**make().to_dict(), "critical": bad})
