"""Backends that ship with core (the eager ``nn`` backend)."""
