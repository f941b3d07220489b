"""Errors a user can fix (a param, a file, the network) and how a stage reports them: one line
naming what to change, exit status 1, no traceback. Anything else is a bug and keeps its
traceback; WOOF_DEBUG=1 shows the traceback of user errors too. A legal value that has to be
capped is no error: one `warning:` line says what was used instead."""
import contextlib
import os
import signal
import sys
from pathlib import Path


class UserError(Exception):
    """A mistake the user can fix; the message says what and how."""


class ParamError(UserError, ValueError):
    """A param (or argument) with a value that cannot work."""


class InputError(UserError, FileNotFoundError):
    """An input file or folder that is missing or is not what it should be."""


def warn(message):
    """One line on stderr, for a value the run goes on with (Python's warnings take two lines)."""
    print(f"warning: {message}", file=sys.stderr)


def capped(param, value, limit, what):
    """min(value, limit), with a warning naming `param` when the limit (`what` there is) applies."""
    if value > limit:
        warn(f"{param}={value} is more than {what} ({limit}): {limit} used instead")
    return min(value, limit)


@contextlib.contextmanager
def reading(path, fix):
    """Around the code that reads (and checks) one input file: a missing, empty, truncated or
    foreign file is an InputError naming it and saying `fix`, never a library's traceback."""
    if not Path(path).exists():
        raise InputError(f"{path} not found: {fix}")
    try:
        yield
    except UserError:
        raise
    except Exception as e:  # json, safetensors, torch, PIL and pandas each raise their own kinds
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise InputError(f"{path} cannot be read ({type(e).__name__}{': ' + detail if detail else ''}): "
                         f"{fix}") from e


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # unwinds like an exception: atomic writes clean up after themselves


def run_stage(main, *args):
    """Run a stage's main(*args); a UserError ends it with `error: <message>` and status 1.
    SIGTERM (a killed `dvc repro`, a CI timeout) unwinds like Ctrl-C, so nothing half-written stays."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return main(*args)
    except UserError as e:
        if os.environ.get("WOOF_DEBUG") == "1":
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
