"""Training: the jitted step (step.py) and the loop around it (loop.py).

  from xydiff.train import loop
  loop.train_and_evaluate(config, workdir)
"""
