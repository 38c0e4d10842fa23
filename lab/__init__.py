"""llm-gateway's offline lab (extra ``[lab]``): profile the arms through a running gateway, train and
evaluate the learned router, start a local vLLM-CPU stack, build model variants.

The commands run on a workstation or in CI, never in the serving path: ``llm-gateway profile``,
``train``, ``evaluate``, ``local-stack``, ``make-variant`` and ``heal-variant`` are registered by
:mod:`lab.commands` through the ``llm_gateway.commands`` entry points. This package may import
:mod:`gateway` and :mod:`router`; neither ever imports it.
"""
