"""The ``giblet`` command: every pipeline stage runs from here without Snakemake.

Each subcommand reads the same YAML config the Snakefile uses (validated by the same schema), with
``--set key.path=value`` overrides, and writes the same files the corresponding rule declares.
"""

from __future__ import annotations

import argparse
import sys

import yaml

from giblet import __version__
from giblet.config import ConfigError, load_config


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", metavar="FILE", default=None,
                        help="YAML config (default: the built-in defaults, i.e. the demo)")
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                        help="override a config key, e.g. --set demo.n_trs=200 (repeatable)")


def cmd_config(args: argparse.Namespace) -> int:
    """Print the complete, validated config (defaults filled in)."""
    config = load_config(args.config, args.overrides)
    yaml.safe_dump(config, sys.stdout, sort_keys=False)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate the demo data set."""
    from giblet.demo import make_demo

    config = load_config(args.config, args.overrides)
    out = args.out or f"{config['results_dir']}/demo"
    make_demo(config["demo"], config["tr"], out, progress=not args.quiet)
    print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="giblet",
        description="Movie + fMRI -> a multimodal autoencoder whose middle layer is the brain. "
                    "Each subcommand is one pipeline stage; `snakemake --cores all` runs them all.",
    )
    parser.add_argument("--version", action="version", version=f"giblet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("config", help="print the validated config with every default filled in")
    _add_config_args(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("demo", help="generate the built-in demo data set (movie, annotations, fMRI, truth)")
    _add_config_args(p)
    p.add_argument("--out", metavar="DIR", help="output directory (default: <results_dir>/demo)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from giblet.logs import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"giblet: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
