"""Where a stateless replica keeps package ciphertexts: ``--blob-url s3://bucket/prefix`` (or the database).

Only the bucket and the key prefix are configured here. The endpoint, the
region and the credentials come from boto3's standard chain
(``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, ``AWS_REGION``,
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, profiles, instance roles), so
no secret is ever on a command line, in the run file the workers read, or in
a log line. Nothing here imports boto3.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgerec.sync.protocol.errors import ConfigError
from edgerec.sync.protocol.origin import split_plain_url

BLOB_URL_ENV = "EDGEREC_BLOB_URL"
# S3's bucket naming rules (3-63 lowercase letters, digits, dots and hyphens, a letter or digit at each end).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX_PART = re.compile(r"[A-Za-z0-9!_.*'()=+-]{1,255}")


@dataclass(frozen=True)
class S3Settings:
    """An S3-compatible store: ``bucket``, objects under ``prefix`` (``""``: the bucket's root).

    The timeouts and attempts bound what one read costs a request thread while
    the store is down: a download then answers 503 within about
    ``max_attempts * connect_timeout_s`` (plus backoff), not after botocore's 60 s default.
    """

    bucket: str
    prefix: str = ""
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 20.0
    max_attempts: int = 2
    # Uploads: multipart past this size, in parts of this size, this many at once; s3transfer holds at most
    # ten parts of a stream in memory (80 MiB), never a whole package read from a file.
    multipart_bytes: int = 8 * 1024 * 1024
    upload_threads: int = 4

    def key(self, sha256: str) -> str:
        """The object key of a blob: ``<prefix>/sha256/<hex>``."""
        return f"{self.prefix}/sha256/{sha256}" if self.prefix else f"sha256/{sha256}"

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def parse_blob_url(url: str, field: str = "--blob-url") -> S3Settings:
    """``s3://bucket[/prefix]`` as :class:`S3Settings`; ConfigError naming ``field`` for anything else."""
    # Credentials come from the AWS chain, never from the URL (the run file and the logs hold it).
    parts = split_plain_url(url, field, "no user name or password in the URL; credentials come from the "
                                        "standard AWS variables, a profile or an instance role")
    if parts.scheme != "s3":
        raise ConfigError(f"expected s3://bucket/prefix, got {url!r}", field=field)
    if parts.query or parts.fragment or parts.port is not None:
        raise ConfigError(f"expected s3://bucket/prefix without query, fragment or port (the endpoint "
                          f"comes from AWS_ENDPOINT_URL_S3), got {url!r}", field=field)
    if not _BUCKET.fullmatch(parts.netloc) or ".." in parts.netloc:
        raise ConfigError(f"{parts.netloc!r} is not an S3 bucket name (3-63 lowercase letters, digits, "
                          "dots and hyphens)", field=field)
    prefix = parts.path.strip("/")
    if prefix and not all(_PREFIX_PART.fullmatch(p) and p not in (".", "..") for p in prefix.split("/")):
        raise ConfigError(f"the prefix {prefix!r} must be path segments of letters, digits and "
                          "!_.*'()=+- (no empty, '.' or '..' segment)", field=field)
    return S3Settings(parts.netloc, prefix)


def blob_settings(url: str | None, field: str = "--blob-url") -> S3Settings | None:
    """:func:`parse_blob_url` of ``url``, or None when it is empty (package ciphertexts stay in the database)."""
    return parse_blob_url(url, field) if url else None
