"""cifarbench's Optuna sweeper for Hydra: `hydra/sweeper=optuna` (see cifarbench.search)."""
