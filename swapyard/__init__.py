"""Swapyard's entry point (`swapyard serve | train | bench`): parses flags and dispatches to the packages."""
