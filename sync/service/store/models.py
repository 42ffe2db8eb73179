"""SQLAlchemy 2 models of the sync service's state.

Times are UNIX seconds (floats): the same on SQLite and PostgreSQL, with no
time zone to get wrong. Secrets (admin and enrollment tokens) are stored as
SHA-256 hashes; data keys only wrapped with the key-encryption key of the
data directory.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# The largest value a BigInteger column holds on SQLite and PostgreSQL alike; integers from
# requests are checked against it before they reach a query.
MAX_BIGINT = 2**63 - 1


class Base(DeclarativeBase):
    """Declarative base of every table."""


class SchemaInfo(Base):
    """One row: the schema version the migrations brought the database to."""

    __tablename__ = "schema_info"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)


class Counter(Base):
    """Named counters; their rows double as cross-process locks (``SELECT ... FOR UPDATE``)."""

    __tablename__ = "counters"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class AdminToken(Base):
    __tablename__ = "admin_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(64))
    created: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class EnrollToken(Base):
    __tablename__ = "enroll_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    tags: Mapped[list[str]] = mapped_column(JSON)
    created: Mapped[float] = mapped_column(Float)
    expires: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    node_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


class Node(Base):
    __tablename__ = "nodes"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    signing_key: Mapped[str] = mapped_column(Text)
    recipient_key: Mapped[str] = mapped_column(Text)
    tags: Mapped[list[str]] = mapped_column(JSON)
    enrolled: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_seen: Mapped[float | None] = mapped_column(Float, nullable=True)
    accelerator: Mapped[str | None] = mapped_column(String(32), nullable=True)
    health: Mapped[str | None] = mapped_column(String(32), nullable=True)
    agent: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # SHA-256 of the last status stored, so unchanged heartbeats are not stored again.
    status_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Schema 2: the node's poll interval (for the stale flag) and its edge server: up, down or none.
    poll_interval_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    edge: Mapped[str | None] = mapped_column(String(16), nullable=True)


class Nonce(Base):
    """Nonces of signed node requests seen within the replay window."""

    __tablename__ = "nonces"
    node_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    created: Mapped[float] = mapped_column(Float, index=True)


class PackageVersion(Base):
    """A published package version: one encrypted blob for the whole fleet."""

    __tablename__ = "packages"
    __table_args__ = (UniqueConstraint("name", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(BigInteger)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    blob_sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    signer: Mapped[str] = mapped_column(String(64))
    artifacts: Mapped[list[str]] = mapped_column(JSON)
    created: Mapped[float] = mapped_column(Float)


class ChannelTarget(Base):
    """A package version published on a channel, as a TUF target path."""

    __tablename__ = "channel_targets"
    __table_args__ = (UniqueConstraint("package_id", "channel"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    package_id: Mapped[int] = mapped_column(ForeignKey("packages.id"))
    channel: Mapped[str] = mapped_column(String(64))
    target_path: Mapped[str] = mapped_column(String(256), unique=True)
    created: Mapped[float] = mapped_column(Float)


class DataKey(Base):
    """An artifact's AES data key, wrapped with the data directory's key-encryption key."""

    __tablename__ = "data_keys"
    package_id: Mapped[int] = mapped_column(ForeignKey("packages.id"), primary_key=True)
    artifact: Mapped[str] = mapped_column(String(256), primary_key=True)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)


class EnvelopeRow(Base):
    """A data key sealed (HPKE) to one node for one artifact."""

    __tablename__ = "envelopes"
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), primary_key=True)
    package_id: Mapped[int] = mapped_column(ForeignKey("packages.id"), primary_key=True)
    artifact: Mapped[str] = mapped_column(String(256), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Rollout(Base):
    """An admin's rollout (or rollback) of one model version."""

    __tablename__ = "rollouts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(BigInteger)
    channel: Mapped[str] = mapped_column(String(64))
    percent: Mapped[float] = mapped_column(Float)
    tags: Mapped[list[str]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16))
    rollback: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float)
    # Schema 2: the rollout pauses itself past this many failed nodes, or this share of its nodes.
    max_failures: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_failure_percent: Mapped[float | None] = mapped_column(Float, nullable=True)
    paused_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class Assignment(Base):
    """What one node should run of one model; signed when the node asks."""

    __tablename__ = "assignments"
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), primary_key=True)
    model: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)
    channel: Mapped[str] = mapped_column(String(64))
    serial: Mapped[int] = mapped_column(BigInteger)
    rollback: Mapped[bool] = mapped_column(Boolean, default=False)
    rollout_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    previous_version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    updated: Mapped[float] = mapped_column(Float)


class NodeModel(Base):
    """What one node reports of one model: current and served version, health, its current failure."""

    __tablename__ = "node_models"
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), primary_key=True)
    model: Mapped[str] = mapped_column(String(64), primary_key=True)
    installed_version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    state: Mapped[str | None] = mapped_column(String(32), nullable=True)
    accelerator: Mapped[str | None] = mapped_column(String(32), nullable=True)
    health: Mapped[str | None] = mapped_column(String(32), nullable=True)
    failure_version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    failure_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated: Mapped[float] = mapped_column(Float)
    # Schema 2: what the node's edge server actually serves (None: down, or not loaded).
    serving_version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    failure_bad: Mapped[bool | None] = mapped_column(Boolean, nullable=True)


class NodeFailure(Base):
    """Every failure a node reported, once each (schema 2): the history ``admin node`` shows."""

    __tablename__ = "node_failures"
    __table_args__ = (
        UniqueConstraint("node_id", "model", "at"),
        Index("ix_node_failures_model_version", "model", "version"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), index=True)
    model: Mapped[str] = mapped_column(String(64))
    version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    at: Mapped[float] = mapped_column(Float)
    bad: Mapped[bool] = mapped_column(Boolean, default=False)
    received: Mapped[float] = mapped_column(Float)


class Report(Base):
    """A node's signed status or metrics report, kept as sent (for the metrics service)."""

    __tablename__ = "reports"
    __table_args__ = (
        UniqueConstraint("node_id", "report_id"),
        Index("ix_reports_kind_received", "kind", "received"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"))
    report_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    received: Mapped[float] = mapped_column(Float)


class TufMetadata(Base):
    """Every signed version of every TUF role; the files on disk are rendered from here."""

    __tablename__ = "tuf_metadata"
    role: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    expires: Mapped[float] = mapped_column(Float)
    created: Mapped[float] = mapped_column(Float)


# -- stateless replicas (schema 4): what a data directory held, kept in the database --------------


BLOB_IN_DB = "db"
BLOB_IN_S3 = "s3"


class BlobRow(Base):
    """A stored package ciphertext, named by its SHA-256; ``location`` says where its bytes are.

    ``db``: the rows of ``blob_chunks``, and this row is inserted in the transaction
    that inserts the last chunk; ``s3`` (schema 6): the object ``<prefix>/sha256/<hex>``
    of the configured object store, and this row is inserted once the upload is
    complete. Either way a blob listed here is complete.
    """

    __tablename__ = "blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    chunk_size: Mapped[int] = mapped_column(Integer)
    created: Mapped[float] = mapped_column(Float)
    location: Mapped[str] = mapped_column(String(8), default=BLOB_IN_DB, server_default=BLOB_IN_DB)


class BlobChunk(Base):
    """``chunk_size`` bytes of a blob (the last one shorter): a range read fetches only the rows it covers."""

    __tablename__ = "blob_chunks"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class WrappedKey(Base):
    """An online key (as its key file's bytes) wrapped with one replica key; ``kek_id`` names that key."""

    __tablename__ = "wrapped_keys"
    kek_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created: Mapped[float] = mapped_column(Float)


STATELESS_TABLES = ("blobs", "blob_chunks", "wrapped_keys")


# -- fleet metrics (issue 10): the nodes' private releases and operational windows ----------------


class MetricRelease(Base):
    """One node's business release for one window: its noise and budget; the counts are in ``metric_counts``.

    A node that had spent its day's privacy budget sends a release with status
    ``budget_exhausted`` and no counts.
    """

    __tablename__ = "metric_releases"
    __table_args__ = (
        UniqueConstraint("node_id", "window_start", "window_seconds"),
        Index("ix_metric_releases_window", "window_start"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"))
    window_start: Mapped[int] = mapped_column(BigInteger)
    window_seconds: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    mechanism: Mapped[str] = mapped_column(String(32))
    epsilon: Mapped[float] = mapped_column(Float)
    sensitivity: Mapped[int] = mapped_column(Integer)
    noise_variance: Mapped[float] = mapped_column(Float)
    bounds: Mapped[dict[str, int]] = mapped_column(JSON)
    budget_day: Mapped[str] = mapped_column(String(10))
    budget_limit: Mapped[float] = mapped_column(Float)
    budget_spent: Mapped[float] = mapped_column(Float)
    received: Mapped[float] = mapped_column(Float, index=True)


class MetricCount(Base):
    """A released (noisy) count vector of one key in one node's window."""

    __tablename__ = "metric_counts"
    __table_args__ = (Index("ix_metric_counts_experiment", "experiment"), Index("ix_metric_counts_model", "model"))
    release_id: Mapped[int] = mapped_column(ForeignKey("metric_releases.id", ondelete="CASCADE"), primary_key=True)
    model: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    experiment: Mapped[str] = mapped_column(String(64), primary_key=True)
    variant: Mapped[str] = mapped_column(String(64), primary_key=True)
    impressions: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    clicks: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    conversions: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class OpsWindowRow(Base):
    """A node's operational figures for one window (no user data), kept as sent."""

    __tablename__ = "ops_windows"
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), primary_key=True)
    window_start: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    window_seconds: Mapped[int] = mapped_column(Integer, primary_key=True)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    received: Mapped[float] = mapped_column(Float, index=True)


class ExperimentRow(Base):
    """A centrally managed A/B experiment: variants are versions of one model, the first is the control."""

    __tablename__ = "experiments"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(64))
    variants: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # [{"name", "version", "weight"}]
    tags: Mapped[list[str]] = mapped_column(JSON)
    salt: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16))  # "running" or "stopped"
    created: Mapped[float] = mapped_column(Float)
    stopped: Mapped[float | None] = mapped_column(Float, nullable=True)


class GatedRollout(Base):
    """A phased rollout of ``version`` against ``base_version`` that advances only when its outcome gates pass."""

    __tablename__ = "gated_rollouts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(BigInteger)
    base_version: Mapped[int] = mapped_column(BigInteger)
    channel: Mapped[str] = mapped_column(String(64))
    tags: Mapped[list[str]] = mapped_column(JSON)
    phases: Mapped[list[float]] = mapped_column(JSON)
    gates: Mapped[list[str]] = mapped_column(JSON)
    alpha: Mapped[float] = mapped_column(Float)
    max_windows: Mapped[int] = mapped_column(Integer)
    phase: Mapped[int] = mapped_column(Integer)
    phase_started: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16))  # running, halted, held, completed, superseded
    reasons: Mapped[list[str]] = mapped_column(JSON)
    created: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float)


FLEET_METRICS_TABLES = ("metric_releases", "metric_counts", "ops_windows", "experiments", "gated_rollouts")


class ServiceSetting(Base):
    """A fleet-wide setting an admin changed at run time (in the database, so every replica sees the same)."""

    __tablename__ = "service_settings"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated: Mapped[float] = mapped_column(Float)
