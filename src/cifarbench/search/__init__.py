"""Hyperparameter search with pruning: what `hydra/sweeper=optuna` runs (conf/hydra/sweeper/optuna.yaml).

    cifarbench train -m hydra/sweeper=optuna hydra.sweeper.n_trials=20 'model.dropout=interval(0,0.6)' \
        'batch_size=choice(64,128,256)' 'optimizer.lr=tag(log,interval(1e-4,1e-2))'

The sweeper (hydra_plugins/cifarbench_optuna_sweeper, a thin Hydra plugin) hands its arguments to
`sweeper.Search.run`, which asks an Optuna study for trials and launches each as a normal job of
the sweep through Hydra's launcher: one run directory per trial, named by the trial's number. Each
trial reports its monitored validation figure after every epoch (`trial.TrialPruning`, the job's
side) and ends `pruned` when the study's pruner says so. Trials never read the test set: the best
trial (by validation) is tested once, when the search ends (`best_trial`).

The study lives in `<sweep dir>/optuna.db` (or `storage`, a database URL), so the same command with
the same `hydra.sweep.dir` continues an interrupted search: finished trials stay, interrupted ones
resume from their last.pt, and only the missing trials are asked for. One search process works on
a study at a time (with joblib, its trials run in parallel): at its start, trials left RUNNING are
taken to be interrupted.

    space.py       the search-space grammar (interval, tag(log|int, ...), choice): the command line's
                   check (config_check.py) and the sweeper read it alike; imports no Optuna
    study.py       the Optuna study: its storage and what it remembers
    sweeper.py     the loop: ask, launch a batch of trials, tell
    trial.py       the job's side of a trial: report each epoch, stop when pruned
    best_trial.py  the best trial's test, read once when the search ends
    summary.py     summary.csv/.md and Optuna's plots; reading a search's summary back for `report`
"""
