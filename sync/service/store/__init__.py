"""The service's state: SQLAlchemy models, the database handle and schema migrations."""

from .db import Database
from .migrations import SCHEMA_VERSION, migrate

__all__ = ["SCHEMA_VERSION", "Database", "migrate"]
