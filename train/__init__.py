"""Training scripts: ``train/run.py`` (see its docstring) and the files it writes (``outputs``)."""
