"""Native (C++) logs of LiteRT and TensorFlow: quiet in command-line processes, shown on request.

LiteRT's Python package has no log-level switch (google-ai-edge/LiteRT#7420): its
C++ logger writes ``INFO: [accelerator_registry.cc:54] ...`` lines straight to file
descriptor 2 whenever a model is created or destroyed, destructors at interpreter
exit included. TensorFlow honours ``TF_CPP_MIN_LOG_LEVEL``, except for the lines it
writes while being imported (before absl's logging is initialised).

So a command-line process calls :func:`quiet` once, first thing (``edgerec`` does,
and so does each edge server worker). It

* sets the switches the libraries have: ``TF_CPP_MIN_LOG_LEVEL=3`` (unless the user
  set it), the ``tensorflow`` and ``absl`` Python loggers to ERROR, and no Python
  warnings from TensorFlow's own modules (deprecations its converter triggers);
* moves Python's own ``sys.stderr`` onto a duplicate of fd 2, so that what Python
  writes (rich output, log records of every thread, tracebacks) no longer goes
  through fd 2;
* hides fd 2 once the interpreter starts exiting (the destructor lines).

Then :func:`silenced` points fd 2 at ``/dev/null`` around the noisy native calls
(model loads and closes, conversion). Only native writes are dropped there: nothing
Python prints is lost, whichever thread prints it, which is what makes this safe in
the long-running edge server too. A fatal native error still shows a Python stack
(``faulthandler`` writes to the moved stderr).

``EDGEREC_LOG_NATIVE=1``, or :func:`show` (``edgerec --verbose``), leaves every
line as the libraries print it. In a process that never called :func:`quiet` (an
application embedding the SDK), :func:`silenced` does nothing: a library does not
take fd 2 away from its host unasked.
"""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import logging
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any, cast

ENV = "EDGEREC_LOG_NATIVE"
_OFF = {"", "0", "false", "no", "off"}
_PY_LOGGERS = ("tensorflow", "absl")
# Deprecation notices TensorFlow's own converter code triggers: nothing a user can act on.
_PY_WARNINGS = r"(tensorflow|keras|tf_keras|tf2onnx)(\.|$)"


class _State:
    shown: bool | None = None  # the process switch; None: follow the environment
    quiet = False
    switched = False  # quiet() set the library switches
    tf_env_set = False
    warning_filter: Any = None
    depth = 0  # nested or concurrent silenced() blocks
    saved_fd: int | None = None


_lock = threading.Lock()


def shown() -> bool:
    """Whether native logs are printed: :func:`show` was called, or ``EDGEREC_LOG_NATIVE`` is set."""
    if _State.shown is not None:
        return _State.shown
    return os.environ.get(ENV, "").strip().lower() not in _OFF


def show(on: bool = True) -> None:
    """The process-level switch (``edgerec --verbose``); child processes inherit it through the environment."""
    _State.shown = on
    os.environ[ENV] = "1" if on else "0"
    if on:
        _unset_library_switches()
    elif _State.quiet:
        _set_library_switches()


def quiet() -> None:
    """Make this command-line process quiet unless native logs are shown; idempotent. Call it early."""
    with _lock:
        if _State.quiet:
            return
        _State.quiet = True
    _detach_python_stderr()
    if not faulthandler.is_enabled():
        # A stderr without a file descriptor: no crash report, as before.
        with contextlib.suppress(AttributeError, OSError, ValueError, RuntimeError):
            faulthandler.enable(sys.stderr)
    atexit.register(_hide_at_exit)
    if not shown():
        _set_library_switches()


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """Native writes to fd 2 go to ``/dev/null`` inside this block (in a :func:`quiet` process)."""
    if not _State.quiet or shown():
        yield
        return
    _enter()
    try:
        yield
    finally:
        _leave()


def _enter() -> None:
    with _lock:
        if _State.depth == 0:
            _State.saved_fd = os.dup(2)
            _point_fd2_at_devnull()
        _State.depth += 1


def _leave() -> None:
    with _lock:
        _State.depth -= 1
        if _State.depth == 0 and _State.saved_fd is not None:
            os.dup2(_State.saved_fd, 2)
            os.close(_State.saved_fd)
            _State.saved_fd = None


def _point_fd2_at_devnull() -> None:
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
    finally:
        os.close(null)


def _detach_python_stderr() -> None:
    """Python's ``sys.stderr`` onto its own duplicate of fd 2 (when it writes to fd 2 today)."""
    stream = sys.stderr
    try:
        if stream is None or stream.fileno() != 2:
            return  # already elsewhere (a file, a test's capture): fd 2 is not Python's
    except (AttributeError, OSError, ValueError):
        return
    stream.flush()
    sys.stderr = open(  # noqa: SIM115 - it lives as long as the process, like the stderr it replaces
        os.dup(2), "w", buffering=1, encoding=stream.encoding, errors=stream.errors or "backslashreplace",
        closefd=True,
    )


def _hide_at_exit() -> None:
    # atexit handlers run before modules are torn down and C++ static destructors run.
    if not shown():
        if sys.stderr is not None:
            sys.stderr.flush()
        _point_fd2_at_devnull()


def _set_library_switches() -> None:
    if _State.switched:
        return
    _State.switched = True
    if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        _State.tf_env_set = True
    for name in _PY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=_PY_WARNINGS)
    _State.warning_filter = warnings.filters[0]


def _unset_library_switches() -> None:
    if not _State.switched:
        return
    _State.switched = False
    if _State.tf_env_set:
        os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
        _State.tf_env_set = False
    for name in _PY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    with contextlib.suppress(ValueError):
        cast(list[Any], warnings.filters).remove(_State.warning_filter)
    _State.warning_filter = None


__all__ = ["ENV", "quiet", "show", "shown", "silenced"]
