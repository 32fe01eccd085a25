"""A run: its train state, where that state lives, and how it is kept on disk.

- state.py: the train state, a plain pytree {'step', 'params', 'opt_state'
  [, 'ema_params']}, with its optimizer and learning-rate schedule, and the
  device mesh and shardings it is held on;
- checkpoint.py: the one orbax wrapper (the config beside every step, damage
  set aside, imported runs, `load_params` for inference);
- workdir.py: the writable check and the one-run-per-workdir lock;
- distributed.py: joining the processes of a multi-host job.

Training (train/), inference and export read and write runs through here.
"""
