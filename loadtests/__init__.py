"""Load, overhead and benchmark tools. Run them from the repository root as modules, e.g.
``.venv/bin/python -m loadtests.overhead --help``; shared pieces live in :mod:`loadtests.kit`."""
