"""PyTorch transcriptions of the baselines' official networks, for the tests only.

Each module is written from its authors' code (the repository, file and
commit are named in it) and keeps their module names, so its state_dict()
has exactly the keys their checkpoints hold.
"""
