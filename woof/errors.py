"""Errors a user can fix (a param, a file, the network) and how a stage reports them: one line
naming what to change, exit status 1, no traceback. Anything else is a bug and keeps its
traceback; WOOF_DEBUG=1 shows the traceback of user errors too."""
import os
import signal
import sys


class UserError(Exception):
    """A mistake the user can fix; the message says what and how."""


class ParamError(UserError, ValueError):
    """A param (or argument) with a value that cannot work."""


class InputError(UserError, FileNotFoundError):
    """An input file or folder that is missing or is not what it should be."""


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
