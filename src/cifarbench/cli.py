"""Entry point: `cifarbench <command> ...`.

`train` hands its arguments to Hydra (overrides, -m, --cfg, --help); the other commands are plain
argparse. Problems the user can fix end as one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cifarbench.config import GROUPS, config_dir, group_options, register_resolvers
from cifarbench.errors import UserError
from cifarbench.files import DiskFull

log = logging.getLogger("cifarbench")


def train(overrides: list[str]) -> int:
    import hydra

    from cifarbench.config_check import check_overrides

    resume = [o.split("=", 1)[1] for o in overrides if o.startswith("resume=")]
    replace = False
    if resume:
        overrides = resume_overrides(Path(resume[-1]), overrides)
    else:
        first_job = check_overrides(overrides)  # bad keys and values fail here, before any run directory exists
        replace = bool(first_job.get("overwrite", False))
    extra = distributed_overrides(overrides)  # last: a torchrun worker never writes the run
    if not extra and "-m" not in overrides and "--multirun" not in overrides:
        claim_named_run_dir(overrides, bool(resume), replace)
    overrides = overrides + extra
    from cifarbench.train_job import train_job  # torch and friends: only once the config is known good

    register_resolvers()
    logging.captureWarnings(True)  # library warnings go to the run's log (train.log), not among its errors
    sys.argv = ["cifarbench train", *overrides]
    hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")(train_job)()
    return 0


def distributed_overrides(overrides: list[str]) -> list[str]:
    """Under torchrun every process runs this command; only rank 0 owns the run directory and the
    log, the others write nothing (Hydra gets a scratch directory and no log files)."""
    from cifarbench.distributed import world_from_env
    from cifarbench.train_job import SCRATCH_PREFIX

    world = world_from_env()
    if not world.enabled:
        return []
    if "-m" in overrides or "--multirun" in overrides:
        raise UserError("torchrun starts one training; run sweeps with -m and a Hydra launcher instead")
    if world.is_main:
        return []
    scratch = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{world.rank}-")
    return [f"hydra.run.dir={scratch}", "hydra.output_subdir=null", "hydra/job_logging=disabled"]


def claim_named_run_dir(overrides: list[str], resuming: bool, replace: bool) -> None:
    """A run into a directory named on the command line (hydra.run.dir=, resume=) owns it before
    Hydra writes anything there: refused while another process trains into it, and refused when
    it holds another run, unless that run is resumed or `overwrite=true` replaces it."""
    from cifarbench import owner
    from cifarbench.runs import holds_a_run, load_run

    named = [o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")]
    if not named:
        return  # a default directory: new, claimed atomically by config.claim_run_dir, owned in train_job
    run_dir = Path(named[-1])
    if not resuming and holds_a_run(run_dir) and owner.state(run_dir) != "held" and not replace:
        status = load_run(run_dir).status
        forward = f"continue it with cifarbench train resume={run_dir}, " if status != "completed" else ""
        raise UserError(
            f"hydra.run.dir={run_dir} holds {'an' if status[0] in 'aeiou' else 'a'} {status} run; {forward}give this "
            "run another hydra.run.dir, "
            "or add overwrite=true to delete that run and train this one in its place"
        )
    owner.claim(run_dir)  # refuses a directory in use, naming its owner
    if replace and not resuming:
        for entry in run_dir.iterdir():
            if entry.name != owner.LOCK_FILE:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        log.info("overwrite=true: the run that was in %s is deleted", run_dir)


def resume_overrides(run_dir: Path, overrides: list[str]) -> list[str]:
    """`resume=RUN_DIR` continues in RUN_DIR itself; its own config comes from the checkpoint, so
    other overrides would change nothing and are refused rather than silently ignored."""
    others = [o for o in overrides if not o.startswith(("resume=", "progress=", "device=", "hydra.", "hydra/"))]
    if others:
        raise UserError(
            f"resume=RUN_DIR continues a run with its own config; drop {' '.join(others)} "
            "(only progress= and device= may change)"
        )
    last = run_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        raise UserError(f"resume={run_dir}: no checkpoint at {last}; expected a run directory of cifarbench train")
    from cifarbench.runs import load_run

    if load_run(run_dir).trial:  # resumed alone, it would read the test set and its study would never hear
        raise UserError(
            f"resume={run_dir}: this run is a trial of the search in {run_dir.parent}; run the search's own "
            f"command again with hydra.sweep.dir={run_dir.parent}, which resumes this trial"
        )
    # Hydra writes into the run's own directory, and must not overwrite its .hydra/ record.
    return [*overrides, f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]


def data_command(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cifarbench data", description="Manage the data caches.")
    sub = parser.add_subparsers(dest="action", required=True)
    imp = sub.add_parser("import", help="decode a copy of a data set once into its uint8 cache")
    imp.add_argument(
        "path",
        type=Path,
        help="cifar-10-python.tar.gz, cifar-100-python.tar.gz (or their extracted folders), or an image-folder "
        "tree or archive (.tar.gz/.tgz/.tar/.zip): train/<class>/* and test/<class>/*, or <class>/*",
    )
    imp.add_argument(
        "--as",
        dest="dataset",
        choices=("auto", "cifar10", "cifar100", "folder"),
        default="auto",
        help="what it is (default auto: the official archives for what they are; a tree with CIFAR-10's ten "
        "classes as cifar10; any other tree as folder, for data=folder data.source=PATH)",
    )
    imp.add_argument("--image-size", type=int, default=32, help="folder: the side images are resized to (default 32)")
    imp.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="folder, one tree without train/ and test/: the fraction of each class tested on (default 0.2)",
    )
    imp.add_argument(
        "--root",
        type=Path,
        default=Path(os.environ.get("CIFARBENCH_DATA", "data")),
        help="data root (default: $CIFARBENCH_DATA or ./data), as data.root in the config",
    )
    ns = parser.parse_args(args)
    if not 8 <= ns.image_size <= 1024:
        raise UserError(f"--image-size {ns.image_size} is not allowed: it must be an integer in [8, 1024]")
    if not 0 < ns.test_fraction < 1:
        raise UserError(f"--test-fraction {ns.test_fraction} is not allowed: it must be a number in (0, 1)")
    from cifarbench.data import import_data

    path, summary = import_data(ns.path, ns.root, ns.dataset, ns.image_size, ns.test_fraction)
    print(f"imported {ns.path} -> {path}: {summary}")
    return 0


def report_command(args: list[str]) -> int:
    from cifarbench.report.build import write_report
    from cifarbench.report.columns import COLUMNS

    parser = argparse.ArgumentParser(prog="cifarbench report", description="Compare runs: table, curves, HTML page.")
    parser.add_argument("paths", nargs="+", type=Path, help="run directories, sweeps or whole output trees")
    parser.add_argument("--out", type=Path, default=Path("report"), help="folder for the report (default ./report)")
    parser.add_argument("--sort", default="test_acc", choices=list(COLUMNS), help="column to sort by")
    parser.add_argument("--ascending", action="store_true", help="smallest first (default: largest first)")
    parser.add_argument(
        "--md", type=Path, help="write only the two tables, as one markdown file (e.g. docs/results.md)"
    )
    ns = parser.parse_args(args)
    command = shlex.join(["cifarbench", "report", *args])
    for path in write_report(ns.paths, ns.out, ns.sort, not ns.ascending, ns.md, command):
        print(path)
    return 0


def evaluate_command(args: list[str]) -> int:
    from cifarbench.inference import evaluate_run

    parser = argparse.ArgumentParser(prog="cifarbench evaluate", description="Re-evaluate a run's test set.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument(
        "--checkpoint", default="auto", choices=["auto", "best", "last"], help="auto: the weights the run tested with"
    )
    ns = parser.parse_args(args)
    result = evaluate_run(ns.run_dir, ns.checkpoint)
    test, recorded = result["test"], result["recorded"]
    print(
        f"{result['checkpoint']}: test accuracy {test['accuracy']:.2f}%, loss {test['loss']:.4f}, "
        f"error {test['error']:.2f}%"
    )
    if recorded.get("accuracy") is not None:
        same = recorded["accuracy"] == test["accuracy"] and recorded["loss"] == test["loss"]
        print(
            f"metrics.json: test accuracy {recorded['accuracy']:.2f}%, loss {recorded['loss']:.4f} "
            f"({'identical' if same else 'DIFFERENT'})"
        )
    return 0


def predict_command(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="cifarbench predict",
        description="Classify your own images with a run (RUN_DIR IMAGE...) or an exported model (--onnx FILE "
        "IMAGE...).",
    )
    parser.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="RUN_DIR IMAGE",
        help="a run directory, then PNG/JPEG files of any size (resized as the run's data was at import)",
    )
    parser.add_argument("--onnx", type=Path, help="an exported model (cifarbench export): run by onnxruntime, no torch")
    parser.add_argument("--output", type=Path, default=Path("predictions.csv"))
    parser.add_argument("--checkpoint", default="auto", choices=["auto", "best", "last"])
    ns = parser.parse_args(args)
    if ns.onnx is not None:
        from cifarbench.predict import predict_onnx

        results = predict_onnx(ns.onnx, ns.paths, ns.output)
    else:
        from cifarbench.inference import predict_run

        results = predict_run(ns.paths[0], ns.paths[1:], ns.output, ns.checkpoint)
    for result in results:
        print(f"{result['image']}: " + ", ".join(f"{name} {p:.1%}" for name, p in result["top"]))
    print(f"wrote {ns.output}")
    return 0


def export_command(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="cifarbench export",
        description="Write a run's tested model for other programs into RUN_DIR/export/: ONNX (normalisation "
        "inside, float images in [0, 1], NCHW, any batch) or safetensors weights with a JSON of what they are.",
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--format", default="onnx", choices=["onnx", "safetensors"])
    parser.add_argument(
        "--checkpoint", default="auto", choices=["auto", "best", "last"], help="auto: the weights the run tested with"
    )
    ns = parser.parse_args(args)
    from cifarbench.export import export_run

    exported = export_run(ns.run_dir, ns.format, ns.checkpoint)
    for path in exported.files:
        print(f"wrote {path}")
    print(exported.summary())
    return 0


def search_command(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cifarbench search", description="Searches shared by several workers.")
    sub = parser.add_subparsers(dest="action", required=True)
    finish = sub.add_parser(
        "finish", help="test a finished study's best trial (once) and write its summary, from any machine"
    )
    finish.add_argument("sweep_dir", type=Path, help="the search's hydra.sweep.dir (shared by its workers)")
    finish.add_argument("--storage", help="the search's hydra.sweeper.storage (default: the sqlite file in sweep_dir)")
    finish.add_argument("--study-name", default="search", help="the search's hydra.sweeper.study_name")
    ns = parser.parse_args(args)
    from cifarbench.search.sweeper import finish_search

    finish_search(ns.sweep_dir, ns.storage, ns.study_name)
    return 0


def runs_command(args: list[str]) -> int:
    from cifarbench.runs import find_runs

    parser = argparse.ArgumentParser(prog="cifarbench runs", description="List runs, newest first.")
    parser.add_argument("path", nargs="?", type=Path, default=Path("outputs"))
    ns = parser.parse_args(args)
    if not ns.path.exists():
        raise UserError(f"{ns.path} does not exist (runs are written to ./outputs by default)")
    runs = sorted(find_runs([ns.path]), key=lambda r: r.started, reverse=True)
    header = f"{'date':<19}  {'name':<24}  {'model':<16}  {'status':<11}  {'test acc':>8}  overrides"
    print(header)
    for run in runs:
        acc = run.test("accuracy")
        name = str(run.config.get("name", run.path.parent.name))
        print(
            f"{run.started:%Y-%m-%d %H:%M:%S}  {name:<24.24}  {run.model:<16.16}  {run.status:<11}  "
            f"{'-' if acc is None else f'{acc:.2f}%':>8}  {' '.join(run.key_overrides)}"
        )
    return 0


def models_command(args: list[str]) -> int:
    argparse.ArgumentParser(
        prog="cifarbench models", description="List every model with its parameter counts."
    ).parse_args(args)
    from cifarbench.models.catalog import catalog, format_catalog

    print(format_catalog(catalog()))
    return 0


def reference_command(args: list[str]) -> int:
    from cifarbench.reference import main as write_reference

    return write_reference(args)


@dataclass(frozen=True)
class Command:
    run: Callable[[list[str]], int]
    help: str


COMMANDS = {
    "train": Command(train, "train a model (Hydra overrides; -m for a sweep)"),
    "data": Command(
        data_command, "data import PATH: decode a copy of CIFAR-10, CIFAR-100 or an image folder once into its cache"
    ),
    "models": Command(models_command, "list every model with its parameter counts (and the reports' counts)"),
    "report": Command(report_command, "report PATH... [--out DIR]: comparison table, overlaid curves, one HTML page"),
    "evaluate": Command(evaluate_command, "evaluate RUN_DIR: reload the tested weights and re-evaluate the test set"),
    "predict": Command(
        predict_command, "predict RUN_DIR IMAGE... (or --onnx FILE IMAGE...): top-3 classes of your images"
    ),
    "search": Command(search_command, "search finish SWEEP_DIR [--storage URL]: end a study shared by workers"),
    "export": Command(
        export_command, "export RUN_DIR [--format onnx|safetensors]: the tested model for other programs"
    ),
    "runs": Command(
        runs_command, "runs [PATH]: list runs newest first (date, name, model, overrides, status, accuracy)"
    ),
    "reference": Command(
        reference_command, "reference [--out FILE]: every config group, option and key, from conf/ (docs/reference.md)"
    ),
}


def usage() -> str:
    lines = [
        "usage: cifarbench <command> [args]",
        "",
        "cifarbench: a config-driven CIFAR-10 experiment runner. Hydra config groups compose into one",
        "training loop that writes metrics, a confusion matrix and curves into outputs/<name>/<date>_<time>/.",
        "",
        "commands:",
        *(f"  {name:<8} {command.help}" for name, command in COMMANDS.items()),
        "",
        "config groups (cifarbench train GROUP=OPTION):",
        *(f"  {group:<13} {', '.join(group_options(group)) or '-'}" for group in GROUPS),
        "",
        "examples:",
        "  cifarbench data import ../shared/data/cifar10-jpeg.tar.gz",
        "  cifarbench train model=baseline epochs=20 batch_size=128 optimizer.lr=1e-3",
        "  cifarbench train -m model.dropout=0.3,0.4 batch_size=64,128",
        "  cifarbench train -m search=r004_table2             # Optuna search with pruning (the optuna extra)",
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
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        return fail(f"unknown command {name!r}; choose one of: {', '.join(COMMANDS)} (see cifarbench --help)")
    # A log file on a full disk must not print a traceback per line; what failed is said once below.
    logging.raiseExceptions = False
    try:
        return COMMANDS[name].run(rest)
    except UserError as exc:
        return fail(str(exc))
    except DiskFull as exc:  # nothing was half-written (files.write_atomic); exit 1, as the input was fine
        fail(f"{exc}; free some space and run the command again")
        return 1
