"""Discovery sources: each one reports the full set of instances it sees, keyed by id.

A source runs as one task and calls ``publish(snapshot)`` with its whole current view every
time that view changes (never a delta): a consumer that missed a call loses nothing, because
the next call carries the truth. That is the lesson of production-stack #1091, where a
DELETED event lost during a watch reconnect left a dead pod routable for 22 hours.

Built-in sources (registered through the ``sage_cp_register_discovery_sources`` hook):
``static`` (a list given in the configuration), ``file`` (a JSON/YAML file re-read when it
changes) and ``kubernetes`` (pods by label selector, `elastic/kubernetes.py`). The admin API
(`POST /admin/instances`, drain, delete) stays the manual source.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.types import ExecutionInstance

logger = logging.getLogger(__name__)

Snapshot = dict[str, ExecutionInstance]
Publish = Callable[[Snapshot], Awaitable[None]]


class DiscoverySource(Protocol):
    """What a discovery plugin's factory returns."""

    name: str

    async def run(self, publish: Publish) -> None:
        """Publish the full view at start and after every change; run until cancelled."""
        ...


class DiscoveryConfig(BaseModel):
    """One entry of ``ControlPlaneOptions.discovery``: a registered source and its options."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)


def _instances(rows: Any, where: str) -> Snapshot:
    if not isinstance(rows, list):
        raise ConfigurationError(
            f"{where}: expected a list of instances, got {type(rows).__name__}"
        )
    out: Snapshot = {}
    for i, row in enumerate(rows):
        try:
            inst = ExecutionInstance.model_validate(row)
        except ValidationError as exc:
            raise ConfigurationError(f"{where}: instance #{i} is invalid: {exc}") from None
        if inst.instance_id in out:
            raise ConfigurationError(f"{where}: instance id {inst.instance_id!r} appears twice")
        out[inst.instance_id] = inst
    return out


class StaticSource:
    """A fixed list of instances (the configuration's own fleet, as a source)."""

    def __init__(
        self, instances: list[Mapping[str, Any] | ExecutionInstance], name: str = "static"
    ):
        self.name = name
        self.snapshot = _instances(
            [i.model_dump() if isinstance(i, ExecutionInstance) else i for i in instances], name
        )

    async def run(self, publish: Publish) -> None:
        await publish(dict(self.snapshot))
        await asyncio.Event().wait()  # nothing ever changes


class FileSource:
    """Instances listed in a JSON or YAML file (a list, or ``{"instances": [...]}``).

    The file is checked every ``interval_s`` (its modification time and size, so polling costs
    one ``stat``); a changed file is re-read and published whole, so an instance removed from
    the file is removed from the fleet. A file that cannot be read or parsed keeps the last
    good view (logged once per change), because an editor saving half a file must not empty
    the fleet.
    """

    def __init__(self, path: str, interval_s: float = 2.0, name: str = "file") -> None:
        if interval_s <= 0:
            raise ConfigurationError(f"file discovery: interval_s must be > 0, got {interval_s}")
        self.name = name
        self.path = Path(path)
        self.interval_s = interval_s
        self._seen: tuple[float, int] | None = None

    def read(self) -> Snapshot:
        text = self.path.read_text()
        data = yaml.safe_load(text) if self.path.suffix in (".yaml", ".yml") else json.loads(text)
        if isinstance(data, dict):
            data = data.get("instances")
        return _instances(data, f"discovery file {self.path}")

    async def run(self, publish: Publish) -> None:
        while True:
            try:
                st = os.stat(self.path)
                stamp = (st.st_mtime, st.st_size)
            except OSError:
                stamp = None
            if stamp is not None and stamp != self._seen:
                self._seen = stamp
                try:
                    snapshot = await asyncio.to_thread(self.read)
                except (OSError, ValueError, yaml.YAMLError, ConfigurationError) as exc:
                    logger.error("discovery file %s unusable, keeping the last view: %s",
                                 self.path, exc)  # fmt: skip
                else:
                    await publish(snapshot)
            await asyncio.sleep(self.interval_s)
