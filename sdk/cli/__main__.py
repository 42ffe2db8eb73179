"""``python -m edgerec.sdk.cli``: the ``edgerec`` command."""

from .main import main

main()
