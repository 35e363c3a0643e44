"""Optional experiment trackers (conf/logger/*). The run directory's CSV/JSON are always written;
a logger sends the same numbers to TensorBoard or MLflow as well."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cifarbench.errors import import_extra


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'optimizer': {'lr': 0.1}} -> {'optimizer.lr': 0.1}; lists become strings."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, int | float | str | bool) else str(value)
    return flat


class NoLogger:
    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        pass

    def log_epoch(self, row: dict[str, float]) -> None:
        pass

    def finish(self, metrics: dict[str, Any]) -> None:
        pass


class TensorBoardLogger:
    """Scalars per epoch, the confusion-matrix figure and the hyperparameters with the final metrics,
    in <run_dir>/tensorboard (`tensorboard --logdir outputs`)."""

    def __init__(self, run_dir: Path, config: dict[str, Any], subdir: str = "tensorboard") -> None:
        import_extra("tensorboard", "tensorboard", "logger=tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = run_dir
        self.config = config
        self.writer = SummaryWriter(log_dir=str(run_dir / subdir))

    def log_epoch(self, row: dict[str, float]) -> None:
        epoch = int(row["epoch"])
        for key, value in row.items():
            if key != "epoch":
                split, _, metric = key.partition("_")
                self.writer.add_scalar(f"{split}/{metric}" if metric else key, value, epoch)

    def finish(self, metrics: dict[str, Any]) -> None:
        import matplotlib.image
        import matplotlib.pyplot as plt

        figure_file = self.run_dir / "confusion_matrix.png"
        if figure_file.is_file():
            fig = plt.figure(figsize=(17, 7))
            plt.imshow(matplotlib.image.imread(figure_file))
            plt.axis("off")
            self.writer.add_figure("confusion_matrix", fig, close=True)
        test = metrics.get("test") or {}  # null: a search trial
        final = {f"hparam/test_{k}": test[k] for k in ("accuracy", "loss", "f1_macro") if k in test}
        self.writer.add_hparams(flatten(self.config), final, run_name=".")
        self.writer.close()


class MLflowLogger:
    """Params, metrics per epoch and the run directory as artifacts, into a local `mlruns/` store by
    default (`mlflow ui --backend-store-uri ./mlruns`)."""

    def __init__(
        self, run_dir: Path, config: dict[str, Any], tracking_uri: str | None = None, experiment: str | None = None
    ) -> None:
        # MLflow 3 keeps its plain-folder store only on request; ./mlruns is what people expect here.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.mlflow = import_extra("mlflow", "mlflow", "logger=mlflow")
        self.run_dir = run_dir
        self.mlflow.set_tracking_uri(tracking_uri or Path("mlruns").resolve().as_uri())
        self.mlflow.set_experiment(experiment or str(config.get("name", "cifarbench")))
        self.mlflow.start_run(run_name=run_dir.name)
        params = {k: str(v)[:500] for k, v in flatten(config).items()}
        self.mlflow.log_params(params)

    def log_epoch(self, row: dict[str, float]) -> None:
        self.mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))

    def finish(self, metrics: dict[str, Any]) -> None:
        test = metrics.get("test") or {}  # null: a search trial
        self.mlflow.log_metrics({f"test_{k}": test[k] for k in ("accuracy", "loss", "error", "f1_macro") if k in test})
        for name in ("metrics.json", "history.csv", "confusion_matrix.png", "curves.png", "classification_report.txt"):
            if (self.run_dir / name).is_file():
                self.mlflow.log_artifact(str(self.run_dir / name))
        self.mlflow.end_run()


class WandbLogger:
    """Weights & Biases: the resolved config, metrics per epoch, the test metrics in the run summary,
    the confusion matrix and curves as images. Offline (`WANDB_MODE=offline` or `mode: offline`) the
    run is kept in <run_dir>/wandb for `wandb sync` later; online it needs `wandb login` first."""

    def __init__(
        self,
        run_dir: Path,
        config: dict[str, Any],
        project: str | None = None,
        entity: str | None = None,
        mode: str | None = None,
        tags: list[str] | None = None,
    ) -> None:
        self.wandb = import_extra("wandb", "wandb", "logger=wandb")
        self.run_dir = run_dir
        self.run = self.wandb.init(
            project=project or str(config.get("name", "cifarbench")),
            entity=entity,
            mode=mode,
            dir=str(run_dir),
            name=run_dir.name,
            config=config,
            tags=tags,
        )

    def log_epoch(self, row: dict[str, float]) -> None:
        self.run.log({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))

    def finish(self, metrics: dict[str, Any]) -> None:
        test = metrics.get("test") or {}  # null: a search trial
        self.run.summary.update({f"test_{k}": test[k] for k in ("accuracy", "loss", "error", "f1_macro") if k in test})
        images = {name: self.run_dir / f"{name}.png" for name in ("confusion_matrix", "curves")}
        self.run.log({name: self.wandb.Image(str(path)) for name, path in images.items() if path.is_file()})
        self.run.finish()
