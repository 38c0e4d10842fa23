#!/usr/bin/env python3
"""``llm-gateway`` with what-if patches applied in-process, to measure a suggested change before making it.

A drop-in for the console script (``serve --config FILE``), for benchmarks only::

  OVERHEAD_VARIANT=gc,httpx2 python loadtests/overhead.py --gateway-bin loadtests/gateway_variant.py ...

Variants (comma separated in ``OVERHEAD_VARIANT``; none = the unmodified gateway):

  gc       ``gc.freeze()`` once the app is built and a gen-0 threshold of 50,000 (default 700):
           fewer collections of the many short-lived objects per request
  httpx    the upstream client is httpx over its default network transport (``HttpxUpstream``, as in the
           tests) instead of the production aiohttp client: the client swap measured within one build
  httpx2   with ``httpx``: httpx replaced by ``httpx2`` (pydantic's fork: the same API, a connection pool
           that snapshots reusable connections once per pass instead of once per queued request)
  nocookie httpx's per-response cookie extraction turned off (the gateway never uses cookies)
"""

from __future__ import annotations

import gc
import os
import sys

VARIANTS = {v.strip() for v in os.environ.get("OVERHEAD_VARIANT", "").split(",") if v.strip()}


def apply() -> None:
    unknown = VARIANTS - {"gc", "httpx", "httpx2", "nocookie"}
    if unknown:
        sys.exit(f"gateway_variant: unknown variant(s) {sorted(unknown)}")
    if "httpx2" in VARIANTS:
        import httpx2

        import gateway.app
        import gateway.upstream

        for mod in (gateway.app, gateway.upstream):
            mod.httpx = httpx2  # type: ignore[attr-defined]
    if "nocookie" in VARIANTS:
        import httpx

        httpx.Cookies.extract_cookies = lambda self, response: None  # type: ignore[method-assign]
        if "httpx2" in VARIANTS:
            import httpx2

            httpx2.Cookies.extract_cookies = lambda self, response: None  # type: ignore[method-assign]
    if VARIANTS & {"httpx", "httpx2"}:
        import gateway.app

        build = gateway.app.create_app

        def create_with_httpx(settings, transport=None, metrics=None):  # type: ignore[no-untyped-def]
            network = gateway.app.httpx.AsyncHTTPTransport()  # type: ignore[attr-defined]
            return build(settings, transport=transport or network, metrics=metrics)

        gateway.app.create_app = create_with_httpx  # type: ignore[assignment]
    if "gc" in VARIANTS:
        import gateway.app

        create_app = gateway.app.create_app

        def create_and_freeze(*args, **kwargs):  # type: ignore[no-untyped-def]
            app = create_app(*args, **kwargs)
            gc.collect()
            gc.freeze()
            gc.set_threshold(50_000, 20, 20)
            return app

        gateway.app.create_app = create_and_freeze  # type: ignore[assignment]


if __name__ == "__main__":
    apply()
    from gateway.cli import main

    print(f"gateway_variant: {sorted(VARIANTS) or 'none'}", flush=True)
    sys.exit(main())
