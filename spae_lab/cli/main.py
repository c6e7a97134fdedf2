"""`spae-lab`: the command line, a thin layer over library functions.

Each command's parser is built in the module of its group (`tokenizer`, `reading`, `generate`,
`reports`) from the shared flags of `spae_lab.cli.flags`. Errors a user can fix (bad config key,
missing dataset, wrong checkpoint, a number out of range) print one line and exit with status 2;
`--debug` shows the traceback instead. Library modules are imported inside the commands that use
them: `--help`, `presets` and `report --list` answer without loading torch.
"""

from __future__ import annotations

import os
import sys

from spae_lab.cli import flags, generate, reading, reports, tokenizer
from spae_lab.devices import use_the_free_cores
from spae_lab.errors import SpaeError
from spae_lab.io import describe_os_error

# SpaeError: every library error a user can fix (bad key, missing dataset, dead endpoint, ...).
# OSError: a read-only or full disk, a missing file. FloatingPointError: a diverging run ("loss
# became nan at step 12; lower train.lr").
USER_ERRORS = (SpaeError, OSError, FloatingPointError)


def is_user_error(error: BaseException) -> bool:
    """Errors that get one line and status 2 instead of a traceback. safetensors' own error type
    (a full disk while writing) is matched by name: importing safetensors here would slow start-up."""
    return isinstance(error, USER_ERRORS) or type(error).__name__ == "SafetensorError"


def build_parser() -> flags.Parser:
    parser = flags.Parser(prog="spae-lab", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (tokenizer, reading, reports, generate):
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):
        parser.print_help()
        return 0
    try:
        args = parser.parse_args(argv)
    except flags.UsageError as e:
        print(e, file=sys.stderr)
        return 2
    use_the_free_cores()  # before any command loads torch
    try:
        return args.func(args)
    except BrokenPipeError:
        # the reader of our output left (`spae-lab presets | head`): stop quietly, as `cat` does;
        # stdout goes to /dev/null so that Python's own flush at exit does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command stopped by a closed pipe
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug or not is_user_error(e):
            raise
        reason = describe_os_error(e) if isinstance(e, OSError) else None  # "[Errno 17] File exists"
        message = reason or " ".join(str(e).split()) or type(e).__name__  # one line, whatever was said
        print(f"spae-lab {args.command}: error: {message}", file=sys.stderr)
        return 2
