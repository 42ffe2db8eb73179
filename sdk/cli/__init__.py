"""The ``edgerec`` command line.

Subcommands of the other parts (convert, serve, sync, admin, node) are loaded
lazily by module path, so ``edgerec`` starts fast and the base install (the
SDK alone) still works: a command whose extra is not installed says which
extra to install.
"""

from __future__ import annotations

from .main import main

__all__ = ["main"]
