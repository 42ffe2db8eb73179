"""edgerec SDK: the package format, trust and on-device runtime.

A device (or an edge server) installs only this part: it verifies a signed
``.edgepkg``, opens encrypted artifacts in memory and runs the model on
LiteRT or ONNX Runtime, on the best accelerator present.
"""

__version__ = "0.1.0"

from .encryption import Envelope, Recipient, add_envelopes, encrypt_package, seal_data_key
from .errors import (
    AcceleratorUnavailable,
    AcceleratorUnavailableError,
    ConfigurationError,
    DecryptionError,
    DuplicateEntryError,
    EdgeRecError,
    IntegrityError,
    InvalidInput,
    InvalidInputError,
    KeyFileError,
    LocalEnvironmentError,
    MissingEntryError,
    ModelClosedError,
    OversizedEntryError,
    PackageError,
    ProtocolError,
    RemoteError,
    RuntimeBackendError,
    ServiceAnswerError,
    ServiceUnreachableError,
    SignatureError,
    UnsafeEntryError,
    UntrustedDataError,
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
    "AcceleratorUnavailableError",
    "Artifact",
    "ConfigurationError",
    "DecryptionError",
    "DuplicateEntryError",
    "EdgeModel",
    "EdgeRecError",
    "Envelope",
    "FeatureSpec",
    "IntegrityError",
    "InvalidInput",
    "InvalidInputError",
    "KeyFileError",
    "LocalEnvironmentError",
    "Manifest",
    "MissingEntryError",
    "ModelClosedError",
    "ModelInfo",
    "ModelSignature",
    "OversizedEntryError",
    "Package",
    "PackageBuilder",
    "PackageError",
    "PackageLimits",
    "ProtocolError",
    "RankedItem",
    "Recipient",
    "RemoteError",
    "RuntimeBackendError",
    "ServiceAnswerError",
    "ServiceUnreachableError",
    "SignatureError",
    "TensorSpec",
    "UnsafeEntryError",
    "UntrustedDataError",
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
