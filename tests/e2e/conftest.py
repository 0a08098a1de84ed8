"""Fixtures of the real-vLLM end-to-end tier (run: ``pytest -m e2e tests/e2e``).

Every test module here must carry ``pytestmark = pytest.mark.e2e`` (the default addopts
``-m 'not e2e'`` then keeps the tier out of the fast suite); :func:`pytest_collection_modifyitems`
also adds the marker to anything collected under ``tests/e2e`` as a safety net.

The tier never skips: when the vLLM venv or the models are missing, the fixtures FAIL with the
command to run (``scripts/e2e/setup_vllm.sh``).

Fixtures (all real servers on 127.0.0.1, started once and shared):

============================  =======  ======================================================
fixture                       scope    value
============================  =======  ======================================================
``vllm_fleet``                session  the :class:`vllm_fleet.VllmFleet` owning every server
``vllm_general``              session  two ``general`` :class:`VllmInstance` (tiny-llama)
``vllm_general_urls``         session  their base URLs, e.g. ``["http://127.0.0.1:41234", ...]``
``vllm_pressure``             module   one ``general`` instance with only 8 KV blocks
``vllm_pressure_url``         module   its base URL
``vllm_embed``                session  the all-MiniLM-L6-v2 ``embedding`` instance
``vllm_embed_url``            session  its base URL
``vllm_pd_pair``              module   :class:`PdPair` ``(prefill_url, decode_url)`` with
                                       NixlConnector; stopped when the module ends, because
                                       NIXL busy-spins a core per idle instance
``tiny_model_name``           session  ``"tiny-llama"`` (the ``model`` of requests)
``embed_model_name``          session  ``"all-MiniLM-L6-v2"``
============================  =======  ======================================================

Failover tests may ``vllm_fleet.kill(name)`` / ``vllm_fleet.restart(name)`` a session instance
(names: ``vllm_general[i].name``); they must restart it before returning, since later tests
share it. ``restart`` keeps the port, so URLs stay valid. Server logs are in
``vllm_fleet.log_dir`` (``$SAGE_CP_E2E_LOG_DIR`` to choose it).

Budget (2 cores, 24 GB): ~1.1 GB PSS per instance; instances start lazily, only when a test
asks for them. Session: 2 general + 1 embedding. Module: the pressure instance or a PD pair.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "e2e"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

# Lives in scripts/e2e, put on sys.path just above; test modules import it the same way.
from vllm_fleet import (  # noqa: E402
    EMBED_MODEL_NAME,
    GENERAL_MODEL_NAME,
    FleetError,
    VllmFleet,
    VllmInstance,
)


class PdPair(NamedTuple):
    """Base URLs of a NixlConnector prefill (kv_producer) and decode (kv_consumer) pair."""

    prefill_url: str
    decode_url: str


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _report(fleet: VllmFleet, inst: VllmInstance) -> None:
    # Recorded (stderr and <log_dir>/instances.txt, which run_tier.sh prints at the end) so the
    # tier log shows startup time and memory per instance on the machine that ran it.
    line = (
        f"{inst.name} ({inst.role}) ready at {inst.url} in {inst.ready_after_s or 0:.1f} s "
        f"(start #{inst.starts}), PSS {inst.pss_bytes() / 2**20:.0f} MiB, "
        f"RSS {inst.rss_bytes() / 2**20:.0f} MiB, log {inst.log_path}"
    )
    print(f"[e2e] {line}", file=sys.stderr)
    with (fleet.log_dir / "instances.txt").open("a") as f:
        f.write(line + "\n")


@pytest.fixture(scope="session")
def vllm_fleet() -> Iterator[VllmFleet]:
    """The fleet owning every real server of the session; stops them all at the end."""
    try:
        fleet = VllmFleet()
    except FleetError as exc:
        pytest.fail(f"real-vLLM tier not set up: {exc}", pytrace=False)
    # A SIGTERM (run_tier.sh's timeout, CI cancelling) would kill pytest without teardown and
    # leave ~1.4 GB servers running in their own sessions: make it a KeyboardInterrupt, which
    # pytest unwinds through the fixture finalizers.
    previous = signal.getsignal(signal.SIGTERM)
    if previous in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        yield fleet
    finally:
        fleet.stop_all()
        if previous in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture(scope="session")
def tiny_model_name() -> str:
    return GENERAL_MODEL_NAME


@pytest.fixture(scope="session")
def embed_model_name() -> str:
    return EMBED_MODEL_NAME


@pytest.fixture(scope="session")
def vllm_general(vllm_fleet: VllmFleet) -> list[VllmInstance]:
    """Two plain tiny-llama instances (prefix caching on), started together."""
    started = [vllm_fleet.start("general", wait=False) for _ in range(2)]
    vllm_fleet.wait_ready(*(i.name for i in started))
    for inst in started:
        _report(vllm_fleet, inst)
    return started


@pytest.fixture(scope="session")
def vllm_general_urls(vllm_general: list[VllmInstance]) -> list[str]:
    """Base URLs of the two general instances."""
    return [i.url for i in vllm_general]


@pytest.fixture(scope="module")
def vllm_pressure(vllm_fleet: VllmFleet) -> Iterator[VllmInstance]:
    """A tiny-llama instance with ``--num-gpu-blocks-override 8`` (1024 tokens of KV).

    Module scope: it is stopped when the module ends, so that with the two general instances,
    the embedding instance and a PD pair the machine never holds more than four generation
    instances (~20 s to start again in a later module that asks for it).
    """
    inst = vllm_fleet.start("general", "general-pressure", kv_pressure=True)
    _report(vllm_fleet, inst)
    try:
        yield inst
    finally:
        vllm_fleet.stop(inst.name)


@pytest.fixture(scope="module")
def vllm_pressure_url(vllm_pressure: VllmInstance) -> str:
    return vllm_pressure.url


@pytest.fixture(scope="session")
def vllm_embed(vllm_fleet: VllmFleet) -> VllmInstance:
    """The all-MiniLM-L6-v2 pooling instance."""
    inst = vllm_fleet.start("embedding")
    _report(vllm_fleet, inst)
    return inst


@pytest.fixture(scope="session")
def vllm_embed_url(vllm_embed: VllmInstance) -> str:
    return vllm_embed.url


@pytest.fixture(scope="module")
def vllm_pd_pair(vllm_fleet: VllmFleet) -> Iterator[PdPair]:
    """A NixlConnector prefill/decode pair for one test module, stopped right after it."""
    prefix = f"pd{int(time.monotonic())}"
    prefill, decode = vllm_fleet.start_pd_pair(prefix)
    _report(vllm_fleet, prefill)
    _report(vllm_fleet, decode)
    try:
        yield PdPair(prefill.url, decode.url)
    finally:
        vllm_fleet.stop(prefill.name)
        vllm_fleet.stop(decode.name)
