"""Entry point: `cifarbench <command> ...`.

`train` hands its arguments to Hydra (overrides, -m, --cfg, --help); the other commands are plain
argparse. Problems the user can fix end as one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from cifarbench.config import GROUPS, config_dir, group_options, register_resolvers
from cifarbench.errors import UserError

log = logging.getLogger("cifarbench")

COMMANDS = {
    "train": "train a model (Hydra overrides; -m for a sweep)",
    "data": "data import PATH: decode a CIFAR-10 copy once into the data cache",
    "models": "list every model with its parameter counts (and the reports' counts)",
}


def usage() -> str:
    lines = [
        "usage: cifarbench <command> [args]",
        "",
        "cifarbench: a config-driven CIFAR-10 experiment runner. Hydra config groups compose into one",
        "training loop that writes metrics, a confusion matrix and curves into outputs/<name>/<date>_<time>/.",
        "",
        "commands:",
        *(f"  {name:<8} {text}" for name, text in COMMANDS.items()),
        "",
        "config groups (cifarbench train GROUP=OPTION):",
        *(f"  {group:<13} {', '.join(group_options(group)) or '-'}" for group in GROUPS),
        "",
        "examples:",
        "  cifarbench data import ../shared/data/cifar10-jpeg.tar.gz",
        "  cifarbench train model=baseline epochs=20 batch_size=128 optimizer.lr=1e-3",
        "  cifarbench train -m model.dropout=0.3,0.4 batch_size=64,128",
        "  cifarbench train --help          # every config key and option",
    ]
    return "\n".join(lines)


def fail(message: str) -> int:
    print(f"cifarbench: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command == "train":
            return train(rest)
        if command == "data":
            return data_command(rest)
        if command == "models":
            from cifarbench.models.catalog import catalog, format_catalog

            print(format_catalog(catalog()))
            return 0
    except UserError as exc:
        return fail(str(exc))
    return fail(f"unknown command {command!r}; choose one of: {', '.join(COMMANDS)} (see cifarbench --help)")


def train(overrides: list[str]) -> int:
    import hydra

    from cifarbench.train_job import train_job

    register_resolvers()
    sys.argv = ["cifarbench train", *overrides]
    hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")(train_job)()
    return 0


def data_command(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cifarbench data", description="Manage the CIFAR-10 data cache.")
    sub = parser.add_subparsers(dest="action", required=True)
    imp = sub.add_parser("import", help="decode a copy of CIFAR-10 once into the uint8 cache")
    imp.add_argument(
        "path", type=Path, help="archive (.tar.gz/.tgz/.tar/.zip), image-folder tree or cifar-10-batches-py"
    )
    imp.add_argument(
        "--root",
        type=Path,
        default=Path(os.environ.get("CIFARBENCH_DATA", "data")),
        help="data root (default: $CIFARBENCH_DATA or ./data), as data.root in the config",
    )
    ns = parser.parse_args(args)
    from cifarbench.data import import_data

    path, summary = import_data(ns.path, ns.root)
    print(f"imported {ns.path} -> {path}: {summary}")
    return 0
