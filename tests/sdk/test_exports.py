"""The SDK's public names are a promise: changing them is a deliberate act."""

import edgerec.sdk as sdk


def test_exported_names():
    assert sorted(sdk.__all__) == sorted([
        "AcceleratorUnavailable", "AcceleratorUnavailableError", "Artifact", "ConfigurationError",
        "DecryptionError", "DuplicateEntryError", "EdgeModel", "EdgeRecError", "Envelope", "FeatureSpec",
        "IntegrityError", "InvalidInput", "InvalidInputError", "KeyFileError", "LocalEnvironmentError",
        "Manifest", "MissingEntryError", "ModelClosedError", "ModelInfo", "ModelSignature", "OversizedEntryError",
        "Package", "PackageBuilder", "PackageError", "PackageLimits", "ProtocolError", "RankedItem", "Recipient",
        "RemoteError", "RuntimeBackendError", "ServiceAnswerError", "ServiceUnreachableError", "SignatureError",
        "TensorSpec", "UnsafeEntryError", "UntrustedDataError", "UntrustedSignerError", "Vocabulary",
        "__version__", "add_envelopes", "encrypt_package", "generate_keypair", "key_id",
        "load_recipient_key", "load_signing_key", "load_verify_key", "seal_data_key",
    ])
    for name in sdk.__all__:
        assert hasattr(sdk, name), name


def test_every_error_is_in_one_of_three_branches():
    errors = {getattr(sdk, n) for n in sdk.__all__ if n.endswith("Error")}
    assert len(errors) == 22
    branches = (sdk.UntrustedDataError, sdk.LocalEnvironmentError, sdk.RemoteError)
    for e in errors - {sdk.EdgeRecError, *branches}:
        assert sum(issubclass(e, b) for b in branches) == 1, e
    assert issubclass(sdk.SignatureError, sdk.UntrustedDataError)
    assert issubclass(sdk.AcceleratorUnavailableError, sdk.LocalEnvironmentError)
    assert issubclass(sdk.KeyFileError, sdk.ConfigurationError)
    # the old names stay for one release, as aliases
    assert sdk.InvalidInput is sdk.InvalidInputError
    assert sdk.AcceleratorUnavailable is sdk.AcceleratorUnavailableError


def test_every_package_hangs_its_errors_on_the_tree():
    from edgerec.converter import errors as converter_errors
    from edgerec.edge_server import errors as edge_errors
    from edgerec.sdk import http_errors
    from edgerec.sync.protocol import errors as sync_errors

    for module in (converter_errors, edge_errors, sync_errors, http_errors):
        classes = [c for n in module.__all__ if isinstance(c := getattr(module, n), type) and issubclass(c, Exception)]
        assert classes, module
        for cls in classes:
            assert issubclass(cls, sdk.EdgeRecError), cls
            assert cls.__name__.endswith("Error"), cls
    # both services refuse requests with the same classes, so the same wire fields
    assert issubclass(edge_errors.NotFoundError, http_errors.NotFoundError)
    assert issubclass(sync_errors.NotFoundError, http_errors.NotFoundError)
    assert sync_errors.EdgeServerError is sync_errors.EdgeControlError
    assert not issubclass(sync_errors.EdgeControlError, edge_errors.EdgeServerError)
    # a setting error names its setting the same way in every package
    for config_error in (sdk.ConfigurationError, edge_errors.ConfigError, sync_errors.ConfigError):
        e = config_error("must be a number > 0, got 0", field="EDGEREC_SYNC_THREADS")
        assert (str(e), e.field, e.detail) == ("EDGEREC_SYNC_THREADS: must be a number > 0, got 0",
                                               "EDGEREC_SYNC_THREADS", "must be a number > 0, got 0")
        assert (str(config_error("no data dir")), config_error("no data dir").field) == ("no data dir", None)


def test_wire_documents_are_one_shape():
    from edgerec.edge_server.errors import ModelNotFoundError, classify
    from edgerec.sdk.http_errors import answer_error, http_status_error
    from edgerec.sync.protocol.errors import PayloadTooLargeError

    edge = classify(ModelNotFoundError("no model 'x'", field="model")).document()
    assert edge == {"error": "model_not_found", "detail": "model: no model 'x'", "field": "model"}
    sync = classify(PayloadTooLargeError("report above 64 KiB", field="body"))
    assert (sync.status, sync.document()["error"], sync.document()["field"]) == (413, "payload_too_large", "body")
    assert classify(sdk.InvalidInputError("ctx", "expected 4 values")).document()["field"] == "ctx"
    assert classify(ValueError("secret")).document() == {"error": "internal", "detail":
                                                         "unexpected ValueError; see the server log"}
    assert http_status_error(405, "Method Not Allowed", None).code == "method_not_allowed"
    long = classify(sdk.InvalidInputError("x" * 10_000, "bad")).document()
    assert len(long["detail"]) <= 500 and len(long["field"]) <= 500
    back = answer_error(404, b'{"error": "not_found", "detail": "no node", "field": "node"}')
    assert (back.status, back.error, back.detail, back.field) == (404, "not_found", "no node", "node")
    assert answer_error(502, b"<html>bad gateway</html>").error == "http_error"


def test_base_install_imports_no_heavy_framework():
    import subprocess
    import sys

    code = ("import sys, edgerec.sdk, edgerec.sdk.cli; "
            "heavy = [m for m in ('tensorflow', 'flask', 'sqlalchemy', 'torch', 'keras') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
