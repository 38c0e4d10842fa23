"""The peer comparison: what one gateway hop costs, ours beside other OpenAI-compatible gateways, in one run.

Every peer stands in front of the same fake vLLM upstream (``loadtests/fake_upstream.py``) and is driven by
the same load client (:mod:`loadtests.kit.client`), one peer after another, everything on 127.0.0.1 and
sharing the machine's cores (nothing is pinned: this is the view a user gets when comparing gateways on one
box; ``python -m loadtests.overhead`` is the other view, the gateway on its own core). Per peer:

* streaming chat at each ``--conc`` concurrency: ``--rounds`` interleaved rounds, direct to the fake vs
  through the peer; added TTFT = via - direct (pooled p50/p99, and per round); the peer's CPU ms per
  streamed request (its whole process tree, user + system, from /proc) over the via rounds, per round too;
* non-streaming chat at ``--ns-conc``: requests/s through the peer vs direct, and the peer's CPU ms per
  request (the fake answers after TTFT + ITL x tokens, as a server that generated the answer would);
* foreign CPU: the machine's busy time minus the peer, the fake and this client, in cores (other work
  competing with the measurement); a peer measured while it was over ``--max-foreign`` is measured again.

Peers (``--only``): ``tcp`` a bare asyncio byte-forwarding hop (the floor; :mod:`loadtests.peer.tcp_hop`),
``vllm-router`` vLLM's Rust router, ``litellm`` LiteLLM's proxy, ``ours`` our gateway with one pinned arm,
``ours-auto`` our gateway with the learned policy over the artifact's arms, requests saying
``model: "auto"``; and any other gateway through ``--gateway-cmd``. vllm-router and LiteLLM come from PyPI
into their own venvs (``loadtests/peer/install_peers.sh``), never into the project's.

Run from the repository root: ``.venv/bin/python -m loadtests.peer --help``.
"""
