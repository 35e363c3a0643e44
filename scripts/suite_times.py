"""Where the test suite's time goes: per file, and per pytest-xdist worker in the order it ran.

    pytest -v --junitxml=/tmp/junit.xml > /tmp/suite.log     # the README's test command, with a record
    python scripts/suite_times.py /tmp/junit.xml /tmp/suite.log

junit.xml gives each test's time (setup, call and teardown); the `-v` log says which worker (gw0,
gw1) finished each test, in order. The first table is each file's total, longest first: where the
suite's time goes. The second is each worker's files (`--dist loadfile` sends a whole file to one
worker) in the order it ran them, with its running total: the difference between the workers'
totals is the time one sat idle at the end while the other finished (the suite's wall time is
about the longer of the two).
Figures depend on the machine and on what else ran; compare runs made alone, on one machine.
"""

from __future__ import annotations

import argparse
import re
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path

VERBOSE_LINE = re.compile(r"^\[(gw\d+)\] \[\s*\d+%\] [A-Z]+ (tests/[\w/]+\.py)::(.+?)\s*$")


def seconds_per_test(junit: Path) -> dict[tuple[str, str], float]:
    """(file, test name) -> seconds, from a junit XML report."""
    seconds = {}
    for case in ET.parse(junit).iter("testcase"):
        file = case.get("classname", "").replace(".", "/") + ".py"
        seconds[(file, case.get("name", ""))] = float(case.get("time", 0))
    return seconds


def worker_runs(log: Path) -> dict[str, list[tuple[str, str]]]:
    """worker -> the (file, test name) it finished, in order, from a `pytest -v` log."""
    runs = defaultdict(list)
    for line in log.read_text().splitlines():
        match = VERBOSE_LINE.match(line)
        if match:
            runs[match.group(1)].append((match.group(2), match.group(3)))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("junit", type=Path)
    parser.add_argument("log", type=Path, nargs="?", help="the `pytest -v` output of the same run")
    args = parser.parse_args()

    seconds = seconds_per_test(args.junit)
    per_file = Counter()
    count = Counter()
    for (file, _), s in seconds.items():
        per_file[file] += s
        count[file] += 1
    print(f"{len(seconds)} tests, {sum(seconds.values()):.0f} s of worker time\n")
    print("| file | tests | seconds |\n| --- | ---: | ---: |")
    for file, s in per_file.most_common():
        print(f"| {file} | {count[file]} | {s:.1f} |")
    if args.log is None:
        return
    for worker, finished in sorted(worker_runs(args.log).items()):
        order: list[list] = []
        for file, name in finished:
            if not order or order[-1][0] != file:
                order.append([file, 0.0])
            order[-1][1] += seconds.get((file, name), 0.0)
        print(f"\n{worker}: {sum(s for _, s in order):.0f} s")
        elapsed = 0.0
        for file, s in order:
            elapsed += s
            print(f"  {elapsed:7.1f}  {file} (+{s:.1f})")


if __name__ == "__main__":
    main()
