"""The `salon` command line: console, run, check and import-card; heavy imports only when used."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.config import Character, Settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="salon",
        description="LLM role-play characters living in group chats (Discord, Telegram, console).",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def config_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--config",
            metavar="PATH",
            help="config file (default: ./config.toml when it exists, else built-in defaults)",
        )

    c = sub.add_parser(
        "console", help="chat with characters in a simulated channel on this terminal"
    )
    config_arg(c)
    c.add_argument(
        "--bot",
        action="append",
        required=True,
        metavar="NAME",
        help="a character: a name from bots/, a .toml file or a character card; repeatable",
    )
    c.add_argument("--direct", action="store_true", help="a direct chat with one human (1:1 form)")
    c.add_argument(
        "--as",
        dest="as_name",
        default="You",
        metavar="NAME",
        help='who unprefixed lines are from (default "You")',
    )
    c.add_argument("--channel", metavar="ID", help="channel id; the same id continues its history")
    c.add_argument(
        "--clock",
        choices=("real", "virtual"),
        default="real",
        help="virtual: /wait moves time instantly (scripts and tests)",
    )
    c.add_argument("--seed", type=int, help="seed for the speaking policy's random choices")
    c.add_argument("--quiet", action="store_true", help="no decision reasons on stderr")

    r = sub.add_parser("run", help="run every Telegram and Discord bot the config declares")
    config_arg(r)

    k = sub.add_parser("check", help="validate the config and the characters; exit 2 on problems")
    config_arg(k)
    k.add_argument(
        "--bot", action="append", default=[], metavar="NAME", help="also check this character"
    )

    i = sub.add_parser(
        "import-card", help="convert a character card (PNG/JSON, V1-V3) to bots/NAME.toml"
    )
    i.add_argument("file", help="the card: .png or .json")
    i.add_argument("--out", default="bots", metavar="DIR", help="where to write (default bots/)")
    i.add_argument("--force", action="store_true", help="overwrite an existing file")
    return p


def _config_path(arg: str | None) -> str | None:
    if arg:
        return arg
    return "config.toml" if Path("config.toml").is_file() else None


def _load(arg: str | None, bots: Sequence[str]) -> tuple[Settings, list[Character]]:
    from core.config import load_settings, resolve_character

    settings = load_settings(_config_path(arg))
    return settings, [resolve_character(b, settings.search_dirs()) for b in bots]


def _console(args: argparse.Namespace) -> int:
    import asyncio

    from adapters.console import run_console
    from core.clock import RealClock, VirtualClock

    settings, characters = _load(args.config, args.bot)
    keys = [c.key for c in characters]
    if len(set(keys)) != len(keys):
        sys.stderr.write("salon: the same --bot is given twice\n")
        return 2
    clock = VirtualClock() if args.clock == "virtual" else RealClock()
    return asyncio.run(
        run_console(
            settings,
            characters,
            direct=args.direct,
            as_name=args.as_name,
            channel_id=args.channel,
            clock=clock,
            seed=args.seed,
            verbose=not args.quiet,
        )
    )


def _check(args: argparse.Namespace) -> int:
    from core.config import ConfigError, list_characters, load_settings, resolve_character

    settings = load_settings(_config_path(args.config))
    dirs = settings.search_dirs()
    refs = list(
        dict.fromkeys(
            [
                *list_characters(dirs),
                *args.bot,
                *(e.bot for e in settings.telegram),
                *(e.bot for e in settings.discord),
            ]
        )
    )
    problems: list[str] = []
    for ref in refs:
        try:
            resolve_character(ref, dirs)
        except ConfigError as e:
            problems.append(str(e))
    if problems:
        sys.stderr.write("\n".join(problems) + "\n")
        return 2
    source = settings.config_path or "built-in defaults"
    print(f"ok: config {source}; {len(refs)} character(s): {', '.join(refs) or 'none'}")
    return 0


def _import_card(args: argparse.Namespace) -> int:
    from core.cards import import_card

    path = import_card(args.file, Path(args.out), overwrite=args.force)
    print(f"wrote {path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from adapters.runner import run_adapters

    settings, _ = _load(args.config, [])
    return asyncio.run(run_adapters(settings, freeze_startup=True))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"console": _console, "check": _check, "import-card": _import_card, "run": _run}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        return _fail(e)


def _fail(error: Exception) -> int:
    """Known problems become one clear message and exit 2; anything else is a real bug."""
    from core.cards import CardError
    from core.config import ConfigError
    from core.errors import StartupError

    if isinstance(error, ConfigError | CardError):
        sys.stderr.write(f"{error}\n")
        return 2
    if isinstance(error, StartupError):
        sys.stderr.write(f"salon: {error}\n")
        return error.exit_code
    raise error


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
