"""Fixtures of the integration tier: the gateway app in-process against fake vLLM upstreams.

``gw`` is the default deployment of :data:`fake_vllm.CONFIG`, started (lifespan run, so every
backend has been health-checked once); ``make_gateway(**overrides)`` starts one with settings
overridden by section. Faults are set on ``upstreams["b1"]`` etc. (see :class:`fake_vllm.FakeVLLM`).
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fake_vllm import FakeVLLM, Gateway, MakeGateway, Upstreams, settings_with

from gateway.app import create_app


@pytest.fixture
def upstreams() -> Upstreams:
    return Upstreams(
        b1=FakeVLLM("b1", "smol-served"),
        b2=FakeVLLM("b2", "smol-served"),
        b3=FakeVLLM("b3", "coder-served"),
        b4=FakeVLLM("b4", "embed-served"),  # used by the EMBEDDINGS deployment only
    )


@pytest.fixture
def make_gateway(upstreams: Upstreams) -> MakeGateway:
    """``async with make_gateway(server={"max_body_bytes": 1024}) as gw:`` — settings overrides by section."""

    @asynccontextmanager
    async def make(**overrides: Any) -> AsyncIterator[Gateway]:
        app = create_app(settings_with(**overrides), transport=httpx.MockTransport(upstreams.handler))
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gateway.test") as client,
        ):
            yield Gateway(app, client, upstreams)

    return make


@pytest.fixture
async def gw(make_gateway: MakeGateway) -> AsyncIterator[Gateway]:
    """The default deployment, started, with every fake backend healthy and idle."""
    async with make_gateway() as gateway:
        yield gateway


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts (``llm-gateway serve``, slow upstreams): killed when it ends, however it ends."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
