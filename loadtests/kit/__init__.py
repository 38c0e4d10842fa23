"""The load tools' shared kit, one noun per module:

- :mod:`~loadtests.kit.procs`: child processes (each leads its own process group and is stopped by it),
  free ports, readiness waits, CPU pinning lists, the fake upstream;
- :mod:`~loadtests.kit.cpu`: CPU seconds from /proc (a process, a process tree, this client, the machine)
  and a meter that snapshots them around each round;
- :mod:`~loadtests.kit.client`: a light raw-asyncio HTTP/1.1 load client (TTFT to the first ``data: {``);
- :mod:`~loadtests.kit.phases`: interleaved direct/via rounds and their summary (added TTFT, CPU per request);
- :mod:`~loadtests.kit.gateway`: our gateway as deployed (``llm-gateway serve`` on a generated config);
- :mod:`~loadtests.kit.pyspy`: py-spy and strace runs against a gateway under load, and their summaries;
- :mod:`~loadtests.kit.report`: number formatting, machine and version facts for result files.
"""
