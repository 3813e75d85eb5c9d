"""The ``hare`` command (main.py) and its commands that run one piece of the DAG on their own:
a stage on any file (table_tools.py), the store's dedup index (index.py), model weights (model.py).

``hare.cli:main`` is the console entry point.
"""

from hare.cli.main import main

__all__ = ["main"]
