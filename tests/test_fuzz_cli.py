"""The command line under random input (issue 14): `spae_lab.cli.main.main` in-process, its current
folder a fresh temporary one, given argument lists built from the real subcommands and flags with
random values. Whatever it is given it ends with status 0, 1 or 2 (argparse's own exit included),
never a traceback, and every file it writes lies inside its temporary folder.

Writes are seen by an audit hook (`sys.addaudithook`: every `open` for writing, `mkdir`, `rename`,
`remove`, ... made by this process), so files other processes change meanwhile do not count.
Commands that would train or load big models are kept out: `train` and `ablate` always carry one
setting that fails validation, few-shot and scene-QA a backend spec that does not parse, `encode`
a checkpoint that does not exist (or a layer count out of range).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spae_lab.assets import cache_dir
from spae_lab.cli.main import build_parser, main
from spae_lab.config import _all_keys, create_config, list_presets

# --- what this process writes ------------------------------------------------------------------------

_WRITES: list[str] | None = None  # recording while a list
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PATH_EVENTS = {"os.mkdir": 0, "os.rename": 1, "os.replace": 1, "os.remove": 0, "os.rmdir": 0,
                "shutil.rmtree": 0, "os.symlink": 1, "os.link": 1, "os.truncate": 0, "os.chmod": 0,
                "os.utime": 0}


def _audit(event: str, args: tuple) -> None:
    if _WRITES is None:
        return
    if event == "open":
        path, mode, flags = args
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITE_FLAGS)
    elif event in _PATH_EVENTS:
        path, writing = args[_PATH_EVENTS[event]], True
        if event in ("os.remove", "os.rmdir", "os.mkdir") and args[-1] not in (None, -1):
            return  # relative to a folder descriptor: inside shutil.rmtree, whose own event has the path
    else:
        return
    if writing and isinstance(path, (str, bytes, os.PathLike)):
        _WRITES.append(os.path.abspath(os.fsdecode(path)))  # now, while the command's folder is current


sys.addaudithook(_audit)


def _allowed(path: str, tmp: Path) -> bool:
    """Inside the command's folder; or Python's bytecode and the project's cache (`SPAE_LAB_CACHE`:
    the converted codebook), which any import or first use may write."""
    real = Path(path)
    if real.is_relative_to(tmp) or "__pycache__" in real.parts or real.suffix == ".pyc":
        return True
    return any(real.is_relative_to(Path(root).resolve())
               for root in (cache_dir(), Path.home() / ".cache", Path.home() / ".config" / "matplotlib"))


# --- argument lists ------------------------------------------------------------------------------------

PARSER = build_parser()
COMMANDS = set(next(a for a in PARSER._actions if a.dest == "command").choices)  # argparse's own list
PLAIN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}")

# Text a shell can pass: no NUL, no lone surrogates.
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=24)
numbers = st.one_of(st.integers(-10**15, 10**15).map(str), st.floats().map(repr),
                    st.sampled_from(["", "0", "-1", "1e309", "nan", "-inf", "0x10", "1_000", " 3 "]))
values = st.one_of(text, numbers, st.sampled_from(["[1, 2", "{a: 1}", "[]", "()", "None", "true", "~", "!!python/x"]))
keys = st.one_of(st.sampled_from(_all_keys(create_config("tiny"))), text)
set_pairs = st.lists(st.tuples(keys, values).map(lambda kv: f"{kv[0]}={kv[1]}"), max_size=4)
names = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True)  # relative names inside the folder


def _flags(pairs: list[tuple[str, str]]) -> list[str]:
    return [token for pair in pairs for token in pair]


config_flags = st.lists(st.one_of(
    st.tuples(st.just("--steps"), numbers), st.tuples(st.just("--batch-size"), numbers),
    st.tuples(st.just("--seed"), numbers), st.tuples(st.just("--minutes"), numbers),
    st.tuples(st.just("--device"), st.one_of(text, st.just("cpu"))),
    st.tuples(st.just("--quantizer"), st.sampled_from(["saq", "rq", "vq"])),
    st.tuples(st.just("--preset"), st.one_of(st.sampled_from(list_presets()), text)),
    st.tuples(st.just("--config"), names), st.tuples(st.just("--dataset"), text),
), max_size=4).map(_flags)


@st.composite
def train_like(draw) -> list[str]:
    """train/ablate with random settings, the last --set always out of bounds (fails validation)."""
    command = draw(st.sampled_from(["train", "ablate"]))
    sets = [token for pair in draw(set_pairs) for token in ("--set", pair)]
    extra = draw(st.lists(st.sampled_from(["--resume", "--force", "--quiet"]), max_size=2, unique=True))
    extra = [] if command == "ablate" else extra
    return [command, *draw(config_flags), "--out", draw(names), *extra, *sets,
            # keys no flag sets (--steps would override a bad train.steps)
            "--set", draw(st.sampled_from(["model.image_size=65536", "model.base_channels=0",
                                           "data.heldout_images=0", "model.layer_sizes=[]"]))]


@st.composite
def report(draw) -> list[str]:
    params = [token for pair in draw(set_pairs) for token in ("-p", pair)]
    kind = draw(st.sampled_from(["list", "tag", "index"]))
    if kind == "list":
        chosen = draw(st.lists(st.one_of(st.sampled_from(["tour", "03", "fewshot", "0"]), text), max_size=2))
        return ["report", "--list", *chosen, *params]
    if kind == "index":
        return ["report", "--index-only", "--out", draw(names)]
    tag = draw(st.one_of(st.sampled_from(["x/../../precious", "../up", "/abs", "", ".hidden", "a b"]),
                         text.filter(lambda t: not PLAIN.fullmatch(t))))
    return ["report", "--tag", tag, "--out", draw(names), *params]


bad_spec = text.filter(lambda t: not t.strip().startswith(("hf:", "openai:")))


@st.composite
def llm_commands(draw) -> list[str]:
    command = draw(st.sampled_from(["fewshot", "scene-qa"]))
    extra = _flags(draw(st.lists(st.one_of(
        st.tuples(st.just("--layers"), numbers), st.tuples(st.just("--seed"), numbers),
        st.tuples(st.just("--llm-concurrency" if command == "fewshot" else "--examples"), numbers),
        st.tuples(st.just("--llm-timeout" if command == "fewshot" else "--queries"), numbers)), max_size=3)))
    return [command, "cifar10" if command == "fewshot" else "scenes", "--backend", draw(bad_spec),
            "--out", draw(names), *extra]


@st.composite
def token_commands(draw) -> list[str]:
    if draw(st.booleans()):  # encode: a checkpoint that is not there, or a layer count out of range
        if draw(st.booleans()):
            return ["encode", draw(st.sampled_from(["nope", "runs/none", "x.safetensors"])), "--count", "1"]
        return ["encode", "scenes", "--count", "1", "--layers", draw(st.sampled_from(["0", "-2", "6", "99"]))]
    words = draw(st.lists(st.one_of(st.sampled_from(["red", "circle", "the", "blue", "xyzzy"]), text), max_size=6))
    out = draw(st.one_of(st.sampled_from(["x.png", "y.jpg", "z.txt", "d/e.png"]), names))
    argv = ["decode", draw(st.sampled_from(["scenes", "nope", "runs/none"])), " ".join(words)]
    return argv + (["--out", out] if draw(st.booleans()) else [])


listing = st.one_of(
    st.just(["presets"]), st.tuples(st.just("presets"), st.just("--verbose"), st.one_of(
        st.sampled_from(list_presets()), text)).map(list),
    st.lists(st.sampled_from(["--verbose", "--markdown"]), unique=True).map(lambda f: ["pretrained", *f]),
    st.sampled_from([["codebook", "--help"], ["train", "--help"], ["--help"], ["codebook", "--max-size", "-3"]]),
    st.tuples(st.just("codebook"), st.just("--source"), st.integers(-5, 10**9).map(lambda v: f"random:{v}:8"),
              st.just("--max-size"), st.just("0"), st.just("--show"), st.just("2")).map(list),
)
garbage = st.lists(text, min_size=1, max_size=5).filter(lambda argv: not COMMANDS & set(argv))
argv_strategy = st.one_of(listing, train_like(), report(), llm_commands(), token_commands(), garbage)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(argv=argv_strategy)
def test_the_command_line_never_crashes_and_writes_only_inside_its_folder(tmp_path_factory, argv):
    _check_one_run(tmp_path_factory, argv)


def _check_one_run(tmp_path_factory, argv: list[str]) -> None:
    """`main(argv)` in a fresh folder: status 0, 1 or 2, no traceback, one error line, and no write
    outside the folder."""
    global _WRITES
    tmp = tmp_path_factory.mktemp("fuzz").resolve()
    out, err = io.StringIO(), io.StringIO()
    before = os.getcwd()
    os.chdir(tmp)
    _WRITES = []
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(argv))
            except SystemExit as e:  # argparse: --help (0) or a usage error (2)
                code = e.code
    finally:
        writes, _WRITES = _WRITES, None
        os.chdir(before)
    assert code in (0, 1, 2), f"{argv}: exit {code}\n{err.getvalue()}"
    assert "Traceback" not in err.getvalue(), f"{argv}\n{err.getvalue()}"
    ours = [line for line in err.getvalue().splitlines() if line.startswith("spae-lab") and ": error: " in line]
    assert code != 2 or len(ours) == 1 or "usage:" in err.getvalue(), f"{argv}\n{err.getvalue()}"
    outside = [path for path in writes if not _allowed(path, tmp)]
    assert not outside, f"{argv} wrote outside its folder: {outside}"


# --- generate's and fewshot's parsers: every flag drawn from its own declaration ------------------------

SUBPARSERS = next(a for a in PARSER._actions if a.dest == "command").choices
# What the issue found accepted before the flags had ranges (issue 23, item 8), per command.
FLOORS = {"generate": {"images": 0, "examples": 1, "examples_per_class": 1, "episodes": 1, "layers": 0,
                       "tokens_per_call": 1, "temperature": 0, "no_repeat_ngram": 0, "seed": 0,
                       "llm_timeout": 0, "llm_retries": 0, "llm_concurrency": 1},
          "fewshot": {"episodes": 1, "ways": 2, "layers": 1, "max_per_class": 0, "seed": 0,
                      "llm_timeout": 0, "llm_retries": 0, "llm_concurrency": 1}}


def _values_of(action, wild: bool) -> st.SearchStrategy:
    """Values for a flag: any of its kind when `wild`, else ones it takes (so that a refusal comes
    from the wild flag of the command line)."""
    numeric = getattr(action.type, "__name__", "") in ("integer", "number", "int", "float")
    if action.choices is not None:
        return st.one_of(st.sampled_from(list(action.choices)), text) if wild else st.sampled_from(list(action.choices))
    if numeric:
        return numbers if wild else st.integers(2, 5).map(str)
    return st.one_of(names, text) if wild else names


def _optional(command: str) -> list:
    return [a for a in SUBPARSERS[command]._actions if a.option_strings and a.dest not in ("help", "backend")]


@st.composite
def parser_argv(draw, command: str, wild_flag: str | None = None) -> list[str]:
    """A command line of `command`: its positionals and required flags, one flag (`wild_flag`, else
    any, or a positional) with a wild value of its kind (choices, numbers of every kind, text), and
    up to five more flags with values they take, so that a refusal comes from the wild one."""
    parser = SUBPARSERS[command]
    optional = _optional(command)
    wild = next((a for a in optional if a.dest == wild_flag), None) if wild_flag else \
        draw(st.sampled_from([None, *optional]))  # None: a positional is the wild one
    drawn = [wild] + [a for a in optional if a.required] + draw(st.lists(st.sampled_from(optional), max_size=5))
    argv = [command]
    for action in parser._actions:
        if not action.option_strings:
            argv.append(draw(_values_of(action, wild is None).filter(lambda v: not v.startswith("-"))))
    for k, action in enumerate(drawn):
        if action is None:
            continue
        argv.append(action.option_strings[-1])
        if action.nargs == 0:
            continue
        count = action.nargs if isinstance(action.nargs, int) else draw(st.integers(1 if action.nargs == "+" else 0, 3))
        argv += [draw(_values_of(action, k == 0)) for _ in range(1 if action.nargs is None else count)]
    return argv


WILD_FLAGS = [(command, action.dest) for command in FLOORS for action in _optional(command)
              if action.nargs != 0 and action.dest not in ("tokenizer",)]


@pytest.mark.parametrize(("command", "flag"), WILD_FLAGS, ids=[f"{c} --{f}" for c, f in WILD_FLAGS])
@settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_generate_and_fewshot_parsers_take_values_in_range_or_refuse_in_one_line(command, flag, data):
    """Each flag of generate and fewshot, given values of every kind beside flags that are fine:
    what is accepted lies in the flag's range (issue 23, item 8), anything else is one line."""
    _check_parse(data.draw(parser_argv(command, flag)))


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(argv=st.one_of(parser_argv("generate"), parser_argv("fewshot")))
def test_generate_and_fewshot_command_lines_parse_or_refuse_in_one_line(argv):
    _check_parse(argv)


def _check_parse(argv: list[str]) -> None:
    from spae_lab.cli.flags import UsageError

    try:
        args = PARSER.parse_args(argv)
    except UsageError as e:
        assert "\n" not in str(e) and str(e).startswith(f"spae-lab {argv[0]}: error: "), str(e)
        return
    except SystemExit as e:  # argparse's own exits (--help) only
        assert e.code == 0, argv
        return
    for dest, floor in FLOORS[argv[0]].items():
        values = getattr(args, dest)
        for value in values if isinstance(values, list) else [values]:
            assert math.isfinite(value) and value >= floor, f"{argv}: {dest} = {value}"
    checked = [a for a in SUBPARSERS[argv[0]]._actions if getattr(a.type, "__name__", "") in ("integer", "number")]
    for action in checked:  # what was accepted parses again to itself: inside its declared range
        values = getattr(args, action.dest)
        for value in (values if isinstance(values, (list, tuple)) else [values]):
            assert value is None or action.type(repr(value)) == value, f"{argv}: {action.dest} = {value}"


@st.composite
def generate_commands(draw) -> list[str]:
    """generate with random flags and a tokenizer that is not there: it must end in one line having
    written nothing outside its folder (the --out checks run before the tokenizer is read)."""
    argv = draw(parser_argv("generate"))
    return [*argv, "--tokenizer", draw(st.sampled_from(["nope", "runs/none", "./digits", "x.safetensors"])),
            "--out", draw(names)]


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(argv=generate_commands())
def test_generate_with_random_flags_never_crashes_nor_writes_outside(tmp_path_factory, argv):
    _check_one_run(tmp_path_factory, argv)


def test_an_argument_no_flag_takes_is_named_with_its_command():
    """Found by the fuzz test above: a stray '-1e+16' was reported by the top parser, without the
    command's name."""
    _check_parse(["fewshot", "a", "--ways", "2", "-1e+16"])
