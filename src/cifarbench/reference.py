"""Writes docs/reference.md, every config group, option and key, from the YAML files in conf/ alone.

Nothing here lists an option or a key by hand: a group's options are the files in its folder, each
described by its own leading comment block (its first prose sentence, and the `cifarbench ...` command
it shows), and the keys are read line by line from the YAML files (value as written, comment beside or
above it). tests/test_reference.py checks that the committed docs/reference.md is what this writes.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cifarbench import config
from cifarbench.files import write_text_atomic
from cifarbench.tables import markdown_table

COMMAND = "cifarbench reference --out docs/reference.md"
KEYED_GROUPS = ("data",)  # groups whose options' keys get their own table (the others differ per option)
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w.]*):(?:\s+(?P<rest>.*))?$")
_TAG = re.compile(r"<(?=[A-Za-z/])")
_COMMENT = re.compile(r"(?:^|\s)#\s?")
_SENTENCE_END = (".", ":", "!", "?")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])(?<!e\.g\.)(?<!i\.e\.)\s")


@dataclass(frozen=True)
class Option:
    name: str
    description: str
    command: str


@dataclass(frozen=True)
class Key:
    name: str
    value: str
    comment: str


def cell(text: str) -> str:
    """Prose for one markdown table cell: on one line, `<name>` kept from being read as an HTML tag
    (tables.markdown_table escapes pipes and shows an empty cell as -)."""
    return _TAG.sub("&lt;", " ".join(text.split()))


def code(text: str) -> str:
    """A value or command as code in a table cell."""
    text = " ".join(text.split())
    return f"`{text}`" if text else ""


def header_comments(path: Path) -> list[str]:
    """The file's leading comment block, without `# ` and without Hydra's `# @package` line."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line[1:].strip()
        if not text.startswith("@package"):
            lines.append(text)
    return lines


def split_command(text: str) -> tuple[str, str]:
    """`cifarbench train x=1      # a note` -> (`cifarbench train x=1`, `a note`): a wide gap ends the command."""
    command, _, note = text.partition("  ")
    return command.strip(), note.strip().lstrip("#").strip()


def sentence(text: str) -> str:
    """Up to the first full stop; a trailing colon (the header went on to show a command) becomes one."""
    text = _SENTENCE_BREAK.split(text, maxsplit=1)[0].strip()
    if text.endswith(":"):
        text = text[:-1]
    return text if text.endswith((".", "!", "?")) else f"{text}."


def describe(path: Path) -> Option:
    """An option as its header shows it: its first `cifarbench ...` command line, and a description
    made of the header's first prose sentence (its lines joined, at most four) and the command line's
    own note (`cifarbench train x=1   # a note`), in the order they appear."""
    lines = header_comments(path)
    commands = [n for n, text in enumerate(lines) if text.startswith("cifarbench ")]
    command, note = split_command(lines[commands[0]]) if commands else ("", "")
    parts: list[tuple[int, str]] = []
    if note:  # a fragment beside the command: made a sentence of its own
        parts.append((commands[0], sentence(note[:1].upper() + note[1:])))
    start = next((n for n, text in enumerate(lines) if text and n not in commands), None)
    if start is not None:
        prose: list[str] = []
        for text in lines[start:]:
            if not text or text.startswith("cifarbench "):
                break
            prose.append(text)
            if text.endswith(_SENTENCE_END) or len(prose) == 4:
                break
        parts.append((start, sentence(" ".join(prose))))
    return Option(path.stem, " ".join(text for _, text in sorted(parts)), command)


def yaml_keys(path: Path, prefix: str = "", skip: tuple[str, ...] = ("defaults",)) -> list[Key]:
    """Every leaf key of a YAML file as `prefix + dotted.key`, its value as written and its comment:
    the one beside it, else the comment lines right above it (not the file's leading block, nor a
    section ruler `# ---`). A plain line-based read, as PyYAML drops comments; a list or a block scalar
    under a key is skipped, as are the top-level keys in `skip`."""
    keys: list[Key] = []
    parents: list[tuple[int, str]] = []
    above: list[str] = []
    skip_deeper: int | None = None  # skip the lines indented deeper than this (a list, a block scalar)
    in_header = True
    for line in path.read_text().splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if skip_deeper is not None:
            if not stripped or indent > skip_deeper or stripped.startswith("- "):
                continue
            skip_deeper = None
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            above = [] if in_header or text.startswith("---") else [*above, text]
            continue
        in_header = False
        match = _KEY.match(line)
        if not match:  # a blank line or a list item
            above = []
            continue
        rest = match["rest"] or ""
        comment_at = _COMMENT.search(rest)
        value = (rest[: comment_at.start()] if comment_at else rest).strip()
        comment = rest[comment_at.end() :].strip() if comment_at else ""
        comment, above = comment or " ".join(above), []
        while parents and parents[-1][0] >= indent:
            parents.pop()
        dotted = ".".join([*(name for _, name in parents), match["key"]])
        if dotted.split(".")[0] in skip or value.startswith(("|", ">")):
            skip_deeper = indent
        elif value:
            keys.append(Key(prefix + dotted, value, comment))
        else:  # a mapping (or a list) follows
            parents.append((indent, match["key"]))
    return keys


def group_defaults() -> dict[str, str]:
    """The option each group takes when none is chosen: conf/config.yaml's defaults list."""
    defaults = yaml.safe_load((config.config_dir() / "config.yaml").read_text()).get("defaults", [])
    return {k: str(v) for item in defaults if isinstance(item, dict) for k, v in item.items()}


def reported(path: Path) -> str:
    """A preset's own `reported` figure, as `metric value (source)`; per-cell figures listed."""
    figure: Any = (yaml.safe_load(path.read_text()) or {}).get("reported")
    if not isinstance(figure, dict):
        return "-"
    value = figure.get("value")
    if value is None and figure.get("cells"):
        value = " / ".join(str(c.get("value")) for c in figure["cells"])
    return f"{figure.get('metric')} {'-' if value is None else value} ({figure.get('source', '-')})"


def options_table(folder: Path, names: list[str], *, with_reported: bool = False) -> list[str]:
    headers = ["option", "description", "command", *(["the report's figure"] if with_reported else [])]
    rows = []
    for path in (folder / f"{name}.yaml" for name in names):
        option = describe(path)
        row = [f"`{option.name}`", cell(option.description), code(option.command)]
        rows.append(row + ([cell(reported(path))] if with_reported else []))
    return markdown_table(headers, rows).splitlines()


def keys_table(keys: list[Key]) -> list[str]:
    rows = [[f"`{k.name}`", code(k.value), cell(k.comment)] for k in keys]
    return markdown_table(["key", "default", "description"], rows).splitlines()


def group_section(group: str, default: str | None) -> list[str]:
    folder = config.config_dir() / group
    choice = "none" if default in (None, "None", "null") else f"`{group}={default}`"
    lines = [f"### `{group}`", "", f"`conf/{group}/`; default: {choice}.", ""]
    options = config.group_options(group)
    lines += options_table(folder, options, with_reported=group in ("experiment", "search"))
    if group in KEYED_GROUPS:
        for option in options:
            lines += ["", f"Keys of `{group}={option}` (`{group}.KEY=VALUE`):", ""]
            lines += keys_table(yaml_keys(folder / f"{option}.yaml", prefix=f"{group}."))
    return [*lines, ""]


def hydra_sections() -> list[str]:
    """conf/hydra/: the launcher and sweeper options cifarbench adds to Hydra's own, with their keys."""
    root = config.config_dir() / "hydra"
    folders = sorted({p.parent for p in root.rglob("*.yaml")}) if root.is_dir() else []
    lines: list[str] = []
    for folder in folders:
        group = folder.relative_to(root.parent).as_posix()
        key_prefix = group.replace("/", ".") + "."
        names = sorted(p.stem for p in folder.glob("*.yaml"))
        lines += [f"### `{group}`", "", *options_table(folder, names), ""]
        for name in names:
            keys = yaml_keys(folder / f"{name}.yaml", prefix=key_prefix)
            if keys:
                lines += [f"Keys of `{group}={name}`:", "", *keys_table(keys), ""]
    return lines


def reference_markdown() -> str:
    defaults = group_defaults()
    lines = [
        f"Generated by `{COMMAND}` from the YAML files in conf/; do not edit this file by hand.",
        "",
        "# Reference: config groups, options and keys",
        "",
        "`cifarbench train GROUP=OPTION KEY=VALUE ...` composes a run from these. Each option is a file",
        "`conf/<group>/<option>.yaml`, described here by its own leading comment; `cifarbench --help` lists",
        "the same groups and options, `cifarbench train --help` the composed config with every key, and",
        "`cifarbench train --cfg job [overrides]` what a command would run. How the keys interact (devices",
        "and precision, validation and the tested weights, optimizers, models) is in [training.md](training.md),",
        "searches in [search.md](search.md).",
        "",
        "## Config groups",
        "",
    ]
    for group in config.GROUPS:
        lines += group_section(group, defaults.get(group))
    lines += [
        "## Top-level keys",
        "",
        "From `conf/config.yaml` (its `hydra:` block, Hydra's own settings, is left out), as `KEY=VALUE`:",
        "",
        *keys_table(yaml_keys(config.config_dir() / "config.yaml", skip=("defaults", "hydra"))),
        "",
        "## Hydra launchers and sweepers",
        "",
        "Chosen with `hydra/launcher=OPTION`, `hydra/sweeper=OPTION` (and its `pruner`/`sampler`), set with",
        "`hydra.launcher.KEY=VALUE`, `hydra.sweeper.KEY=VALUE`. Hydra's own `basic` launcher and sweeper",
        "(one job after another; the grid of `-m`) stay the defaults; the launchers of Hydra's plugins",
        "(`joblib`, `submitit_local`, `submitit_slurm`) are chosen by name once installed.",
        "",
        *hydra_sections(),
    ]
    while lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"


def main(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="cifarbench reference", description="Write the config reference (docs/reference.md) from conf/."
    )
    parser.add_argument("--out", type=Path, help="file to write (default: print to stdout)")
    ns = parser.parse_args(args)
    text = reference_markdown()
    if ns.out is None:
        sys.stdout.write(text)
    else:
        write_text_atomic(ns.out, text)
        print(f"wrote {ns.out}")
    return 0
