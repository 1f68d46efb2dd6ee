"""Fails on import, as a user's storage module with a bug would: its error must surface as it is."""

raise RuntimeError("the storage module itself is broken")
