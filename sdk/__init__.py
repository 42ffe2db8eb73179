"""edgerec SDK: the package format, trust and on-device runtime.

A device (or an edge server) installs only this part: it verifies a signed
``.edgepkg``, opens encrypted artifacts in memory and runs the model on
LiteRT or ONNX Runtime, on the best accelerator present.
"""

__version__ = "0.1.0"

from .encryption import Envelope, Recipient, add_envelopes, encrypt_package, seal_data_key
from .errors import (
    AcceleratorUnavailable,
    DecryptionError,
    DuplicateEntryError,
    EdgeRecError,
    IntegrityError,
    InvalidInput,
    KeyFileError,
    ModelClosedError,
    OversizedEntryError,
    PackageError,
    RuntimeBackendError,
    SignatureError,
    UnsafeEntryError,
    UntrustedSignerError,
)
from .keys import generate_keypair, key_id, load_recipient_key, load_signing_key, load_verify_key
from .manifest import Artifact, FeatureSpec, Manifest, ModelSignature, TensorSpec
from .model import EdgeModel, ModelInfo
from .package import Package, PackageBuilder, PackageLimits
from .ranking import RankedItem
from .vocab import Vocabulary

__all__ = [
    "AcceleratorUnavailable",
    "Artifact",
    "DecryptionError",
    "DuplicateEntryError",
    "EdgeModel",
    "EdgeRecError",
    "Envelope",
    "FeatureSpec",
    "IntegrityError",
    "InvalidInput",
    "KeyFileError",
    "Manifest",
    "ModelClosedError",
    "ModelInfo",
    "ModelSignature",
    "OversizedEntryError",
    "Package",
    "PackageBuilder",
    "PackageError",
    "PackageLimits",
    "RankedItem",
    "Recipient",
    "RuntimeBackendError",
    "SignatureError",
    "TensorSpec",
    "UnsafeEntryError",
    "UntrustedSignerError",
    "Vocabulary",
    "__version__",
    "add_envelopes",
    "encrypt_package",
    "generate_keypair",
    "key_id",
    "load_recipient_key",
    "load_signing_key",
    "load_verify_key",
    "seal_data_key",
]
