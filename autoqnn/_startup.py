"""Quiet TensorFlow start-up for `import autoqnn` and the `autoqnn` command line.

`autoqnn/__init__.py` imports this module before anything imports TensorFlow,
because both `python -m autoqnn` and the `autoqnn` console script import the
package (and with it TensorFlow) before `autoqnn.cli` runs, and a program's
`import autoqnn` should not print a screen of TensorFlow start-up lines either.

Setting `TF_CPP_MIN_LOG_LEVEL` is not enough with recent TensorFlow: the
messages logged while its shared libraries load ("oneDNN custom operations
are on", "Could not find cuda drivers", ...) are written before TensorFlow
reads the variable. So, for the command line only, the import runs with the
process's stderr (file descriptor 2) captured; afterwards the captured log
entries at or above the level `TF_CPP_MIN_LOG_LEVEL` asks for are written
back, and if the import fails everything captured is. Where TensorFlow was
imported before autoqnn, or stderr is not a file (a notebook kernel), nothing
changes. `TF_CPP_MIN_LOG_LEVEL=0` shows everything again.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
DEFAULT_LOG_LEVEL = "3"
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
_ENTRY = re.compile(r"^([IWEF])\d{4} ")
_ABSL_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called"
_SCRIPT_NAMES = ("autoqnn", "autoqnn.exe", "autoqnn-script.py")


def running_as_cli(argv=None) -> bool:
    """True when this process is the command line (`python -m autoqnn`, `autoqnn ...`).

    While `python -m autoqnn` imports the package to locate `autoqnn.__main__`,
    `sys.argv[0]` is "-m"; the console script runs with its own path there.
    """
    argv = sys.argv if argv is None else argv
    first = argv[0] if argv else ""
    return first == "-m" or Path(first).name in _SCRIPT_NAMES


def min_log_level() -> int:
    """The level `TF_CPP_MIN_LOG_LEVEL` asks for (0 when unset or not a number)."""
    try:
        return int(os.environ.get(LOG_LEVEL_VARIABLE, "0"))
    except ValueError:
        return 0


def kept_log_lines(text: str, level: int) -> str:
    """The part of captured start-up output that `level` lets through.

    Log entries ("I0000 00:00:... file.cc:12] message", severities I/W/E/F)
    below `level` are dropped with their continuation lines (the lines up to
    the next entry), and so is absl's notice that early messages go to stderr;
    any other output is kept.
    """
    kept, keep = [], True
    for line in text.splitlines(keepends=True):
        entry = _ENTRY.match(line)
        if entry:
            keep = _SEVERITY[entry.group(1)] >= level
        elif line.startswith(_ABSL_NOTICE):
            keep = False
            continue
        if keep:
            kept.append(line)
    return "".join(kept)


def quiet_tensorflow_import() -> None:
    """Sets `TF_CPP_MIN_LOG_LEVEL` (default "3") and imports TensorFlow with its start-up
    log filtered to that level (see the module docstring)."""
    os.environ.setdefault(LOG_LEVEL_VARIABLE, DEFAULT_LOG_LEVEL)
    level = min_log_level()
    if "tensorflow" in sys.modules or level < 1:
        return
    try:
        sys.stderr.flush()
        fd = sys.stderr.fileno()
        saved = os.dup(fd)
    except (AttributeError, OSError, ValueError):  # no real stderr: nothing to filter
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), fd)
        failed = True
        try:
            import tensorflow  # noqa: F401

            failed = False
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            sys.stderr.write(text if failed else kept_log_lines(text, level))
            sys.stderr.flush()


quiet_tensorflow_import()
