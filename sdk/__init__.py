"""edgerec SDK: the package format, trust and on-device runtime."""

__version__ = "0.1.0"
