"""Batch's model engine: the child process that loads a Bento and predicts chunks
(``_child.py``, started by file path, never imported by Django code except for its framing
helpers) and the worker's side of it (``runner``: start, send, collect, stop), as
``registry/validation/`` holds the validation child. Nothing here is imported at package
level, so the framing helpers stay importable without the worker's dependencies."""
