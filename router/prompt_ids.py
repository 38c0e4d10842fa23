"""Prompt ids: ``<task>/<item>[#<variant>]``, e.g. ``gsm8k/00042`` or ``mmlu-circular/00042#1``.

Prompts made from one source item (the id up to ``#``) belong together: they share a data split and
a cross-validation fold, and the bootstrap draws them as one cluster. The data sets that make the
ids live in ``lab.datasets``; the router only needs to group them.
"""

from __future__ import annotations


def group_of(prompt_id: str) -> str:
    """The source item a prompt was made from: the id up to ``#`` (``mmlu-circular/00042#1`` ->
    ``mmlu-circular/00042``). Prompts of one group share a split and a cross-validation fold."""
    return prompt_id.partition("#")[0]
