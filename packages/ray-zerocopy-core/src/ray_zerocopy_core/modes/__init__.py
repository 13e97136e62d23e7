"""Execution modes: how a rebuilt model is used (``actor`` or ``task``)."""
