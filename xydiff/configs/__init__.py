"""The packaged configs (installed as `xydiff.configs`): `--config=NAME` finds them by name.

Each module has `get_config()`; default.py holds every field with its default
and the others override it.
"""
