"""Flags that several commands share, and numeric types that check their range where they are parsed.

Every numeric flag of `spae-lab` is declared with `integer(...)` or `number(...)`, so `--images -3`,
`--ways 1`, `--temperature nan` or `--episodes 0` end in argparse's one-line usage error (status 2)
before anything is loaded. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from spae_lab.config import list_presets
from spae_lab.video.config import list_clip_presets

MAX_COUNT = 1_000_000  # images, episodes, steps of a command-line run: far above any real use
MAX_SEED = 2**32 - 1  # numpy's and torch's seeds both take this range


class UsageError(Exception):
    """A command line argparse cannot read; `main` prints it as one line with status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument raises UsageError instead of printing the whole usage and exiting:
    the message is the one line a person needs, and `main(argv)` returns 2 to in-process callers."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")

    def parse_args(self, args=None, namespace=None):
        # argparse reports arguments no command took from the top parser; name the command that
        # was given them instead, as its other errors do
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            command = getattr(namespace, "command", None)
            prog = f"{self.prog} {command}" if command else self.prog
            raise UsageError(f"{prog}: error: unrecognized arguments: {' '.join(extras)} (see {prog} --help)")
        return namespace


def integer(least: int, most: int = MAX_COUNT) -> Callable[[str], int]:
    """An argparse type: an int in [least, most]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not least <= value <= most:
            raise argparse.ArgumentTypeError(f"must be in {least:,}..{most:,}, got {value:,}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


def number(least: float, most: float = math.inf, *, above: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float in [least, most] (in (least, most] with `above=True`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        low_ok = value > least if above else value >= least
        if not (math.isfinite(value) and low_ok and value <= most):
            bound = f"> {least:g}" if above else f">= {least:g}"
            upper = "" if math.isinf(most) else f" and <= {most:g}"
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}{upper}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def backend_spec(text: str) -> str:
    """An argparse type: a backend spec that parses (`hf:...`, `openai:...@URL`); nothing loaded."""
    from spae_lab.llm.base import LLMError
    from spae_lab.llm.spec import parse_backend_spec

    try:
        parse_backend_spec(text)
    except LLMError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


# --- shared flags -----------------------------------------------------------------------------------


def quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def seed(p: argparse.ArgumentParser, help: str = "random seed") -> None:
    p.add_argument("--seed", type=integer(0, MAX_SEED), default=0, help=help)


def out(p: argparse.ArgumentParser, default: str | None, help: str) -> None:
    p.add_argument("--out", default=default, required=default is None, help=help)


def resume_or_force(p: argparse.ArgumentParser, what: str) -> None:
    """--resume / --force for a command that owns its --out folder (one of them, or neither: then an
    existing run there is refused)."""
    once = p.add_mutually_exclusive_group()
    once.add_argument("--resume", action="store_true", help=f"continue the {what} in --out")
    once.add_argument("--force", action="store_true", help=f"replace the {what} in --out (only its own "
                      "files are removed)")


def force(p: argparse.ArgumentParser, what: str) -> None:
    """--force for a command that owns its --out folder and resumes its own run there by itself."""
    p.add_argument("--force", action="store_true", help=f"replace another {what} in --out (only its "
                   "own files are removed); without it, the same run resumes and another is refused")


def config(p: argparse.ArgumentParser) -> None:
    """The training config: a preset, a YAML file, --set pairs and shortcuts (see `config_overrides`)."""
    p.add_argument("--preset", default="small", choices=list_presets() + list_clip_presets())
    p.add_argument("--config", help="YAML file of config keys (dotted or nested)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. train.lr=5e-4")
    p.add_argument("--steps", type=integer(1, 10_000_000))
    p.add_argument("--batch-size", dest="batch_size", type=integer(1, 4096))
    p.add_argument("--dataset", help="scenes, digits, mnist, or an ImageFolder folder / .tar(.gz)")
    p.add_argument("--seed", type=integer(0, MAX_SEED))
    p.add_argument("--minutes", type=number(0, above=True), help="wall-clock budget")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--quantizer", choices=["saq", "rq"])


# config key each shortcut flag of `config` sets
CONFIG_SHORTCUTS = {"steps": "train.steps", "batch_size": "train.batch_size", "dataset": "data.dataset",
                    "seed": "train.seed", "minutes": "train.max_minutes", "device": "train.device",
                    "quantizer": "model.quantizer"}


def llm(p: argparse.ArgumentParser) -> None:
    """The frozen LLM: a backend spec and, for HTTP backends, how to talk to the server."""
    p.add_argument("--backend", type=backend_spec, default="hf:smollm2",
                   help="hf:<id or folder> or openai:<model>@<base_url> (key from $OPENAI_API_KEY)")
    p.add_argument("--llm-endpoint", choices=["completions", "chat"], default="completions",
                   help="openai backends: chat cannot rank by likelihood")
    p.add_argument("--llm-timeout", type=number(0, 3600, above=True), default=60.0,
                   help="openai backends: seconds per request, the whole reply and any wait included")
    p.add_argument("--llm-retries", type=integer(0, 100), default=6, help="openai backends: retries per request")
    p.add_argument("--llm-concurrency", type=integer(1, 256), default=4,
                   help="openai backends: parallel requests")
    p.add_argument("--llm-scoring", choices=["auto", "echo", "next-token"], default="auto",
                   help="openai backends: score answers from prompt logprobs (echo: vLLM, OpenAI), from "
                   "the top next tokens (next-token: llama-cpp-python's server), or find out (auto)")
    p.add_argument("--llm-top-logprobs", type=integer(1, 1_000_000), default=20,
                   help="openai backends, next-token scoring: how many likeliest next tokens to ask for")


def load_llm(args):
    """The backend the `llm` flags describe: an HTTP backend built now (it loads nothing), or the
    spec of a local one, which the library loads when it first needs it."""
    if not args.backend.startswith("openai:"):
        return args.backend
    from spae_lab.llm import load_backend

    return load_backend(args.backend, endpoint=args.llm_endpoint, timeout=args.llm_timeout,
                        max_retries=args.llm_retries, concurrency=args.llm_concurrency,
                        scoring=args.llm_scoring, top_logprobs=args.llm_top_logprobs)


def decodings(p: argparse.ArgumentParser, default: list[str]) -> None:
    p.add_argument("--decoding", nargs="+", choices=["likelihood", "constrained", "open"], default=default,
                   help="likelihood: the best-scored answer; constrained: generation restricted to the "
                   "answers; open: free generation, exact match")
