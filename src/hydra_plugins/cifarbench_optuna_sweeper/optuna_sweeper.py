"""The Hydra side of `hydra/sweeper=optuna`: Hydra finds sweepers in the `hydra_plugins` namespace
package, builds this one from conf/hydra/sweeper/optuna.yaml and calls `sweep` with the command
line's overrides. The search itself is cifarbench.search.sweeper.Search; Optuna is imported only there, so
this module loads (for Hydra's plugin scan) without the optional extra installed."""

from __future__ import annotations

import sys
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        n_trials: int,
        sampler: Any,
        pruner: Any,
        direction: str | None = None,
        study_name: str = "search",
        storage: str | None = None,
        n_jobs: int | None = None,
        params: dict[str, str] | None = None,
        enqueue: list[dict[str, Any]] | None = None,
        heartbeat_seconds: float = 30,
        stale_after_seconds: float = 300,
    ) -> None:
        self.n_trials, self.sampler, self.pruner, self.direction = n_trials, sampler, pruner, direction
        self.study_name, self.storage, self.n_jobs = study_name, storage, n_jobs
        self.params = OmegaConf.to_container(params) if isinstance(params, DictConfig) else dict(params or {})
        self.enqueue = OmegaConf.to_container(enqueue) if isinstance(enqueue, ListConfig) else list(enqueue or [])
        self.heartbeat_seconds, self.stale_after_seconds = heartbeat_seconds, stale_after_seconds

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        from cifarbench.errors import UserError
        from cifarbench.files import DiskFull
        from cifarbench.search.sweeper import Search

        try:
            Search(self, self.config, self.launcher).run(arguments)
        except UserError as exc:  # Hydra would print a traceback and exit 1
            print(f"cifarbench: error: {exc}", file=sys.stderr)
            sys.exit(2)
        except DiskFull as exc:  # the study and the trials' files are intact: the same command continues
            print(f"cifarbench: error: {exc}; free some space and run the search's command again", file=sys.stderr)
            sys.exit(1)
