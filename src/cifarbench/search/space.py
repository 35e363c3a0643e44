"""The search-space grammar: which overrides are searched, and over what (Hydra's sweep syntax).

`interval(a,b)` is a float range, `tag(int, interval(a,b))` an integer one, `tag(log, ...)` the
same on a log scale; `choice(..)`, `a,b,c` and `range(..)` are categorical. The command line's
check (config_check.py) and the sweeper read the same rules here. Optuna is imported only where a
distribution is built, so checking a command line needs no Optuna and stays quick.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, Transformer
from omegaconf import DictConfig

from cifarbench.errors import UserError, import_extra

if TYPE_CHECKING:
    import optuna

SWEEPER_MODULE = "hydra_plugins.cifarbench_optuna_sweeper"


def is_search(sweeper: DictConfig) -> bool:
    """Whether Hydra's sweeper (hydra.sweeper) is this search rather than the grid sweeper."""
    return str(sweeper.get("_target_", "")).startswith(SWEEPER_MODULE)


def require_optuna() -> None:
    import_extra("optuna", "optuna", "hydra/sweeper=optuna")


@dataclass
class SearchSpace:
    distributions: dict[str, Any]  # override key (with its + or ++) -> optuna distribution
    expressions: list[str]  # the searched overrides as written, e.g. model.dropout=interval(0,0.6)
    fixed: list[str]  # every other override, passed to every trial as it is


def interval_ends(interval: IntervalSweep, where: str) -> tuple[float, float] | tuple[int, int]:
    """The two ends of `interval(low, high)`, checked: low < high, low > 0 on a log scale, and
    whole numbers for `tag(int, ...)` (Hydra parses both ends as floats), returned as ints then."""
    low, high = interval.start, interval.end
    if not low < high:
        raise UserError(f"{where}: interval(low, high) needs low < high")
    if "log" in interval.tags and low <= 0:
        raise UserError(f"{where}: tag(log, interval(low, high)) needs low > 0")
    if "int" in interval.tags:
        if low != int(low) or high != int(high):
            raise UserError(f"{where}: tag(int, interval(low, high)) needs whole numbers")
        return int(low), int(high)
    return float(low), float(high)


def search_space(arguments: list[str]) -> SearchSpace:
    """The overrides split into the searched ones and the fixed ones. A later override of a key
    replaces an earlier one (the command line replaces `hydra.sweeper.params`)."""
    space: dict[str, tuple[Any, Override]] = {}
    for override in OverridesParser.create().parse_overrides(arguments):
        searched = _distribution(override) if override.is_sweep_override() else None
        space.pop(override.get_key_element(), None)
        space[override.get_key_element()] = (searched, override)
    return SearchSpace(
        distributions={key: d for key, (d, _) in space.items() if d is not None},
        expressions=[o.input_line for d, o in space.values() if d is not None],
        fixed=[o.input_line for d, o in space.values() if d is None],
    )


def _distribution(override: Override) -> optuna.distributions.BaseDistribution:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    tags = getattr(value, "tags", set())
    if override.is_interval_sweep():
        low, high = interval_ends(value, override.input_line)
        if "int" in tags:
            return IntDistribution(low, high, log="log" in tags)
        return FloatDistribution(low, high, log="log" in tags)
    if tags & {"log", "int"}:
        raise UserError(f"{override.input_line}: tag(log, ...) and tag(int, ...) apply to interval(...) only")
    values = list(override.sweep_iterator())
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return CategoricalDistribution(values)
    return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))


def sweeper_params(params: dict[str, Any] | None) -> list[str]:
    """`hydra.sweeper.params` ({key: expression}) as overrides, before the command line's."""
    return [f"{key}={expression}" for key, expression in (params or {}).items()]


def checked_space(arguments: list[str], enqueue: list[dict[str, Any]]) -> SearchSpace:
    """The search space, or a UserError naming what is wrong with it (checked by `cifarbench train`
    before Hydra starts, and again by the sweeper)."""
    space = search_space(arguments)
    if not space.distributions:
        raise UserError("hydra/sweeper=optuna found nothing to search; give e.g. 'model.dropout=interval(0,0.6)'")
    if "monitor" in space.distributions:
        raise UserError("monitor is the search's objective and cannot be searched; set one monitor")
    for setting in enqueue:
        unknown = set(setting) - set(space.distributions)
        if unknown:
            raise UserError(f"hydra.sweeper.enqueue names {', '.join(sorted(unknown))}, which is not searched")
    return space
