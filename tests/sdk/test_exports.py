"""The SDK's public names are a promise: changing them is a deliberate act."""

import edgerec.sdk as sdk


def test_exported_names():
    assert sorted(sdk.__all__) == sorted([
        "AcceleratorUnavailable", "Artifact", "DecryptionError", "DuplicateEntryError", "EdgeModel",
        "EdgeRecError", "Envelope", "FeatureSpec", "IntegrityError", "InvalidInput", "KeyFileError",
        "Manifest", "ModelClosedError", "ModelInfo", "ModelSignature", "OversizedEntryError", "Package",
        "PackageBuilder", "PackageError", "PackageLimits", "RankedItem", "Recipient", "RuntimeBackendError",
        "SignatureError", "TensorSpec", "UnsafeEntryError", "UntrustedSignerError", "Vocabulary",
        "__version__", "add_envelopes", "encrypt_package", "generate_keypair", "key_id",
        "load_recipient_key", "load_signing_key", "load_verify_key", "seal_data_key",
    ])
    for name in sdk.__all__:
        assert hasattr(sdk, name), name


def test_every_error_is_an_edgerec_error():
    errors = [getattr(sdk, n) for n in sdk.__all__ if n.endswith(("Error", "Unavailable", "Input"))]
    assert len(errors) == 14
    assert all(issubclass(e, sdk.EdgeRecError) for e in errors)


def test_base_install_imports_no_heavy_framework():
    import subprocess
    import sys

    code = ("import sys, edgerec.sdk, edgerec.sdk.cli; "
            "heavy = [m for m in ('tensorflow', 'flask', 'sqlalchemy', 'torch', 'keras') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
