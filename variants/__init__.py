"""Model variants for the local stack (extra ``[variants]``: torch + transformers): layer pruning by
Block Influence (:mod:`variants.builder`) and healing by distillation from the full model
(:mod:`variants.healer`, with :mod:`variants.distill`, :mod:`variants.heal_data`,
:mod:`variants.checkpoint` and :mod:`variants.lora`).

Runs in the backend environment, never in the gateway's: ``llm-gateway make-variant`` and
``heal-variant`` (:mod:`lab.variant`) start ``python -m variants build|heal ...`` with the backend
venv's Python. Modules import only the standard library at the top level; torch is imported when
the work starts. This package imports neither :mod:`gateway` nor :mod:`lab`.
"""
