"""Start and stop real vLLM OpenAI servers on 127.0.0.1 for the end-to-end tier.

Runs in the *project* venv (standard library only); each server runs in the cached vLLM venv
made by ``scripts/e2e/setup_vllm.sh``, on the models that ``scripts/e2e/build_tiny_model.py``
built (found through its ``manifest.json``). Flags and environment are those docs/architecture.md §6 saw
working on this 2-core CPU.

Library use (what ``tests/e2e/conftest.py`` does)::

    from vllm_fleet import VllmFleet

    with VllmFleet() as fleet:
        g = fleet.start("general")                 # tiny-llama, ready when this returns
        e = fleet.start("embedding")               # all-MiniLM-L6-v2, /v1/embeddings
        p, d = fleet.start_pd_pair()               # NixlConnector kv_producer / kv_consumer
        fleet.kill(g.name)                         # SIGKILL the process group (failover tests)
        fleet.restart(g.name)                      # same name, port and flags; waits for /health
    # leaving the block stops every instance

Roles (``Role``):

* ``general``: tiny-llama for completions/chat; ``kv_pressure=True`` adds
  ``--num-gpu-blocks-override 8`` (8 blocks of 128 tokens) so that a few long requests fill the KV
  cache and ``vllm:kv_cache_usage_perc`` / ``vllm:num_requests_waiting`` move.
* ``embedding``: all-MiniLM-L6-v2 with ``--runner pooling --max-model-len 256``, no prefix caching.
* ``prefill`` / ``decode``: tiny-llama with ``NixlConnector`` as kv_producer / kv_consumer, each
  with its own ``VLLM_NIXL_SIDE_CHANNEL_PORT``. NIXL's progress thread busy-spins a core per idle
  instance: start the pair only for the tests that need it and stop it right after.

CLI::

    python scripts/e2e/vllm_fleet.py up --general 2 --embedding --pd     # foreground; Ctrl-C stops
    python scripts/e2e/vllm_fleet.py up --general 1 --detach             # writes a state file
    python scripts/e2e/vllm_fleet.py down                                # stops a detached fleet

Environment: ``SAGE_CP_E2E_VENV`` (vLLM venv), ``SAGE_CP_E2E_MODELS`` (model cache with
``manifest.json``), ``SAGE_CP_E2E_LOG_DIR`` (server logs; default a fresh temp dir),
``SAGE_CP_E2E_STARTUP_TIMEOUT`` (seconds to wait for /health, default 300).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Role = Literal["general", "embedding", "prefill", "decode"]
ROLES: tuple[Role, ...] = ("general", "embedding", "prefill", "decode")

HOST = "127.0.0.1"
GENERAL_MODEL_NAME = "tiny-llama"
EMBED_MODEL_NAME = "all-MiniLM-L6-v2"
SETUP_HINT = "run scripts/e2e/setup_vllm.sh (and scripts/e2e/build_tiny_model.py with its python)"
REPO_ROOT = Path(__file__).resolve().parents[2]

# docs/architecture.md §6 low-memory start: ~1.4 GB and ~35 s per generation instance on this CPU.
COMMON_FLAGS: tuple[str, ...] = (
    "--distributed-executor-backend",
    "uni",
    "--kv-cache-memory-bytes",
    "64M",
    "--enforce-eager",
    "--dtype",
    "float32",
)
COMMON_ENV: Mapping[str, str] = {
    # One process per server: the engine-core subprocess would double memory and startup time.
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    # No hub, no telemetry: the machine has no network beyond package registries.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


class FleetError(RuntimeError):
    """A server failed to start, died, or the environment is not set up."""


def default_venv() -> Path:
    env = os.environ.get("SAGE_CP_E2E_VENV")
    return Path(env) if env else Path.home() / ".cache" / "sage-cp" / "vllm-venv"


def default_models_dir() -> Path:
    env = os.environ.get("SAGE_CP_E2E_MODELS")
    return Path(env) if env else Path.home() / ".cache" / "sage-cp" / "models"


def default_startup_timeout() -> float:
    return float(os.environ.get("SAGE_CP_E2E_STARTUP_TIMEOUT", "300"))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it; tiny race accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 60) -> str:
    """Last ``lines`` lines of a log file ('' when missing), for error messages."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET with the standard library (keeps this module free of project dependencies)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), ""


@dataclass(frozen=True)
class Models:
    """Paths of the two models, read from build_tiny_model.py's manifest.json."""

    tiny_llama: Path
    minilm: Path

    @classmethod
    def load(cls, models_dir: Path | None = None) -> Models:
        manifest = (models_dir or default_models_dir()) / "manifest.json"
        if not manifest.exists():
            raise FleetError(f"no model manifest at {manifest}: {SETUP_HINT}")
        data = json.loads(manifest.read_text())
        models = cls(Path(data["tiny_llama"]), Path(data["minilm"]))
        for p in (models.tiny_llama, models.minilm):
            if not (p / "config.json").exists():
                raise FleetError(f"model directory {p} is missing: {SETUP_HINT}")
        return models


@dataclass
class VllmInstance:
    """One vLLM server: what it was started with and its live process."""

    name: str
    role: Role
    port: int
    model: str  # served model name (what requests put in "model")
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    ready_after_s: float | None = None  # seconds from spawn to /health 200, last start
    starts: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. ``http://127.0.0.1:41234``."""
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _group_pids(self) -> list[int]:
        """Pids of the server's process group (API server, EngineCore, resource tracker)."""
        if not self.alive() or self.proc is None:
            return []
        pgid = self.proc.pid  # start_new_session=True: the group id is the leader's pid
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                # Field 5 (pgrp) counted after the ')' closing the command name.
                if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                    pids.append(int(stat.parent.name))
            except (OSError, IndexError, ValueError):
                continue
        return pids

    def _sum_proc_field(self, filename: str, key: str) -> int:
        total = 0
        for pid in self._group_pids():
            try:
                text = Path(f"/proc/{pid}/{filename}").read_text()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith(key):
                    total += int(line.split()[1]) * 1024
        return total

    def rss_bytes(self) -> int:
        """Summed RSS of the process group (0 when stopped); counts shared pages twice."""
        return self._sum_proc_field("status", "VmRSS:")

    def pss_bytes(self) -> int:
        """Summed PSS of the process group: shared pages split, the honest memory cost."""
        return self._sum_proc_field("smaps_rollup", "Pss:")

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)


class VllmFleet:
    """Owns a set of real vLLM servers; every one is stopped by :meth:`stop_all`.

    Names are unique within a fleet (``general-0``, ``embedding-0``, ``prefill-0`` ... by default).
    All methods are synchronous and meant for one thread (pytest fixtures, a CLI).
    """

    def __init__(
        self,
        venv: Path | None = None,
        models: Models | None = None,
        log_dir: Path | None = None,
        startup_timeout: float | None = None,
    ) -> None:
        self.venv = venv or default_venv()
        self.python = self.venv / "bin" / "python"
        if not self.python.exists():
            raise FleetError(f"vLLM venv not found at {self.venv}: {SETUP_HINT}")
        self.models = models or Models.load()
        env_log = os.environ.get("SAGE_CP_E2E_LOG_DIR")
        self.log_dir = log_dir or (
            Path(env_log) if env_log else Path(tempfile.mkdtemp(prefix="sage-cp-e2e-"))
        )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.startup_timeout = (
            startup_timeout if startup_timeout is not None else default_startup_timeout()
        )
        self.instances: dict[str, VllmInstance] = {}
        # Servers live in their own sessions, so nothing else reaps them: if the owner exits
        # without stop_all (an exception, Ctrl-C, a timeout's SIGTERM turned into one), the
        # interpreter's exit still stops them.
        atexit.register(self.stop_all)

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> VllmFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    # -- building command lines ------------------------------------------------------------
    def _argv(
        self,
        role: Role,
        port: int | str,
        kv_pressure: bool,
        extra_args: Sequence[str],
    ) -> tuple[list[str], str]:
        argv = [
            str(self.python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--host",
            HOST,
            "--port",
            str(port),
            *COMMON_FLAGS,
        ]
        if role == "embedding":
            served = EMBED_MODEL_NAME
            argv += [
                "--model",
                str(self.models.minilm),
                "--served-model-name",
                served,
                "--runner",
                "pooling",
                "--max-model-len",
                "256",
                # Pooling models gain nothing from prefix caching and vLLM refuses some combos.
                "--no-enable-prefix-caching",
            ]
        else:
            served = GENERAL_MODEL_NAME
            argv += [
                "--model",
                str(self.models.tiny_llama),
                "--served-model-name",
                served,
                "--max-model-len",
                "512",
                # Explicit, so that a changed default in a vLLM upgrade cannot turn it off.
                "--enable-prefix-caching",
            ]
            if kv_pressure:
                argv += ["--num-gpu-blocks-override", "8"]
            if role in ("prefill", "decode"):
                kv_role = "kv_producer" if role == "prefill" else "kv_consumer"
                cfg = {
                    "kv_connector": "NixlConnector",
                    "kv_role": kv_role,
                    "kv_buffer_device": "cpu",
                }
                argv += ["--kv-transfer-config", json.dumps(cfg)]
        argv += list(extra_args)
        return argv, served

    def _env(self, role: Role, extra_env: Mapping[str, str] | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
        # The project venv may be active: make sure its packages never shadow the vLLM venv's.
        env.pop("PYTHONPATH", None)
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env.update(COMMON_ENV)
        if role in ("prefill", "decode"):
            env["UCX_NET_DEVICES"] = "lo"
            env["VLLM_NIXL_SIDE_CHANNEL_HOST"] = HOST
            env["VLLM_NIXL_SIDE_CHANNEL_PORT"] = str(free_port())
        if extra_env:
            env.update(extra_env)
        return env

    def serve_command(self, role: Role = "general") -> list[str]:
        """The command line of one ``role`` server with the port left as ``{port}``, for a
        launcher that starts servers itself (the local actuator's command template): the
        environment and working directory :meth:`start` gives its servers, set through
        ``env``, which then execs the server (signals reach vLLM itself)."""
        if role in ("prefill", "decode"):
            # Each NIXL server needs its own side-channel port, which one template cannot give.
            raise ValueError(f"serve_command: role {role!r} cannot share one command line")
        argv, _ = self._argv(role, "{port}", False, ())
        # Only what a server needs: the launcher formats every argument with str.format, and
        # an inherited variable holding braces (an exported shell function) would break it.
        env = self._env(role, None)
        keep = {"HOME", "PATH", "LANG", "TMPDIR", *COMMON_ENV}
        pairs = [f"{k}={v}" for k, v in sorted(env.items()) if k in keep]
        return ["env", "-i", "-C", str(self.log_dir), *pairs, *argv]

    # -- lifecycle -------------------------------------------------------------------------
    def start(
        self,
        role: Role,
        name: str | None = None,
        *,
        port: int | None = None,
        kv_pressure: bool = False,
        extra_args: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
        wait: bool = True,
    ) -> VllmInstance:
        """Start one server of ``role`` and (by default) wait until ``/health`` answers 200.

        ``name`` defaults to ``<role>-<n>``; ``port`` to a free port. ``extra_args`` are appended
        to the vLLM command line. With ``wait=False`` the call returns at once: call
        :meth:`wait_ready` later (starting two servers before waiting overlaps their ~35 s
        startups). Raises :class:`FleetError` with the log tail when the server fails to start.
        """
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
        if name is None:
            n = sum(1 for i in self.instances.values() if i.role == role)
            name = f"{role}-{n}"
            while name in self.instances:
                n += 1
                name = f"{role}-{n}"
        if name in self.instances:
            raise ValueError(f"an instance named {name!r} already exists")
        port = port or free_port()
        argv, served = self._argv(role, port, kv_pressure, extra_args)
        inst = VllmInstance(
            name=name,
            role=role,
            port=port,
            model=served,
            argv=argv,
            env=self._env(role, extra_env),
            log_path=self.log_dir / f"{name}.log",
            extra={"kv_pressure": kv_pressure},
        )
        self.instances[name] = inst
        self._spawn(inst)
        if wait:
            self.wait_ready(name)
        return inst

    def start_pd_pair(
        self, prefix: str = "pd", *, wait: bool = True
    ) -> tuple[VllmInstance, VllmInstance]:
        """Start a NixlConnector prefill (kv_producer) and decode (kv_consumer) instance.

        Both start before either is waited for, so their startups overlap. Returns
        ``(prefill, decode)`` named ``<prefix>-prefill`` and ``<prefix>-decode``.
        """
        p = self.start("prefill", f"{prefix}-prefill", wait=False)
        d = self.start("decode", f"{prefix}-decode", wait=False)
        if wait:
            self.wait_ready(p.name, d.name)
        return p, d

    def _spawn(self, inst: VllmInstance) -> None:
        with inst.log_path.open("ab") as log:
            header = f"\n===== start #{inst.starts + 1} of {inst.name}: {' '.join(inst.argv)}\n"
            log.write(header.encode())
            log.flush()
            # New session = own process group, so stop/kill reaches every child vLLM forks.
            inst.proc = subprocess.Popen(
                inst.argv,
                env=inst.env,
                cwd=str(self.log_dir),  # never the repo: vLLM may drop files in its cwd
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        inst.started_at = time.monotonic()
        inst.ready_after_s = None
        inst.starts += 1

    def wait_ready(self, *names: str, timeout: float | None = None) -> None:
        """Block until every named instance (default: all) answers ``GET /health`` with 200.

        Fails fast when a process exits; on timeout the instance is stopped. Either way the
        :class:`FleetError` message carries the tail of the server log.
        """
        timeout = self.startup_timeout if timeout is None else timeout
        pending = [self.instances[n] for n in (names or tuple(self.instances))]
        deadline = time.monotonic() + timeout
        while pending:
            for inst in list(pending):
                if inst.proc is None or inst.proc.poll() is not None:
                    code = inst.proc.returncode if inst.proc else None
                    raise FleetError(
                        f"vLLM instance {inst.name} exited with code {code} before becoming "
                        f"healthy; log {inst.log_path}:\n{inst.log_tail()}"
                    )
                try:
                    status, _ = http_get(f"{inst.url}/health", timeout=2.0)
                except (OSError, urllib.error.URLError):
                    status = 0
                if status == 200:
                    inst.ready_after_s = time.monotonic() - inst.started_at
                    pending.remove(inst)
            if not pending:
                return
            if time.monotonic() > deadline:
                names_left = ", ".join(i.name for i in pending)
                logs = "\n".join(f"--- {i.name} ({i.log_path}):\n{i.log_tail()}" for i in pending)
                for inst in pending:
                    self._terminate(inst)
                raise FleetError(
                    f"vLLM instance(s) {names_left} not healthy after {timeout:.0f} s\n{logs}"
                )
            time.sleep(0.5)

    def _terminate(self, inst: VllmInstance, grace: float = 10.0) -> None:
        proc = inst.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        # Children that outlived the leader (same group) must not keep ports or cores.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def kill(self, name: str) -> None:
        """SIGKILL the instance's whole process group at once (a crash, for failover tests).

        The instance stays registered, so :meth:`restart` can bring it back on the same port.
        """
        inst = self.instances[name]
        if inst.proc is not None and inst.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(inst.proc.pid, signal.SIGKILL)
            inst.proc.wait(timeout=30)

    def restart(self, name: str, *, wait: bool = True) -> VllmInstance:
        """Stop (if still running) and start the instance again: same name, port, flags.

        The port may stay in TIME_WAIT briefly; uvicorn sets SO_REUSEADDR so rebinding works.
        """
        inst = self.instances[name]
        self._terminate(inst)
        self._spawn(inst)
        if wait:
            self.wait_ready(name)
        return inst

    def stop(self, name: str) -> None:
        """Stop one instance gracefully (SIGTERM, then SIGKILL) and forget it."""
        inst = self.instances.pop(name)
        self._terminate(inst)

    def stop_all(self) -> None:
        """Stop every instance; safe to call twice."""
        for name in list(self.instances):
            self.stop(name)

    # -- queries ---------------------------------------------------------------------------
    def by_role(self, role: Role) -> list[VllmInstance]:
        return [i for i in self.instances.values() if i.role == role]

    def urls(self, role: Role) -> list[str]:
        return [i.url for i in self.by_role(role)]

    def describe(self) -> list[dict[str, object]]:
        """JSON-friendly state: name, role, url, pid, model, log, startup seconds, RSS."""
        return [
            {
                "name": i.name,
                "role": i.role,
                "url": i.url,
                "pid": i.pid,
                "model": i.model,
                "log": str(i.log_path),
                "ready_after_s": None if i.ready_after_s is None else round(i.ready_after_s, 1),
                "rss_mb": round(i.rss_bytes() / 2**20),
                "pss_mb": round(i.pss_bytes() / 2**20),
            }
            for i in self.instances.values()
        ]


# -- CLI ---------------------------------------------------------------------------------------
def _state_file() -> Path:
    return Path(tempfile.gettempdir()) / "sage-cp-e2e-fleet.json"


def _cli_up(args: argparse.Namespace) -> int:
    fleet = VllmFleet(log_dir=Path(args.log_dir) if args.log_dir else None)
    try:
        for _ in range(args.general):
            fleet.start("general", wait=False)
        if args.pressure:
            fleet.start("general", "general-pressure", kv_pressure=True, wait=False)
        if args.embedding:
            fleet.start("embedding", wait=False)
        if args.pd:
            fleet.start_pd_pair(wait=False)
        fleet.wait_ready()
    except BaseException:
        fleet.stop_all()
        raise
    state = fleet.describe()
    print(json.dumps(state, indent=2), flush=True)
    if args.detach:
        _state_file().write_text(json.dumps(state))
        print(f"detached; stop with: {sys.argv[0]} down", file=sys.stderr)
        return 0
    stop = False

    def _on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    print("serving; Ctrl-C stops all", file=sys.stderr, flush=True)
    try:
        while not stop:
            for inst in fleet.instances.values():
                if not inst.alive():
                    print(f"{inst.name} died; log {inst.log_path}", file=sys.stderr)
                    stop = True
            time.sleep(1)
    finally:
        fleet.stop_all()
    return 0


def _cli_down(args: argparse.Namespace) -> int:
    path = _state_file()
    if not path.exists():
        print("no detached fleet", file=sys.stderr)
        return 0
    for entry in json.loads(path.read_text()):
        pid = int(entry["pid"])
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
            print(f"stopped {entry['name']} (pgid {pid})")
    path.unlink()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Real vLLM servers for the e2e tier")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start servers and print their URLs as JSON")
    up.add_argument("--general", type=int, default=1, help="number of general instances")
    up.add_argument("--pressure", action="store_true", help="one more with 8 KV blocks")
    up.add_argument("--embedding", action="store_true", help="one all-MiniLM-L6-v2 instance")
    up.add_argument("--pd", action="store_true", help="one NixlConnector prefill/decode pair")
    up.add_argument("--detach", action="store_true", help="leave running; stop with 'down'")
    up.add_argument("--log-dir", default=None)
    up.set_defaults(func=_cli_up)
    down = sub.add_parser("down", help="stop a fleet started with 'up --detach'")
    down.set_defaults(func=_cli_down)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except FleetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def iter_metric(text: str, name: str) -> Iterator[tuple[dict[str, str], float]]:
    """Samples of metric ``name`` in Prometheus text: ``(labels, value)`` pairs.

    A deliberately small parser for the tier's own checks (no escaped quotes or commas inside
    label values, which vLLM does not emit); the control plane has its own real parser.
    """
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name) :]
        labels: dict[str, str] = {}
        if rest.startswith("{"):
            body, _, rest = rest[1:].partition("}")
            for part in body.split(","):
                if "=" in part:
                    k, _, v = part.partition("=")
                    labels[k.strip()] = v.strip().strip('"')
        elif not rest.startswith(" "):
            continue  # a longer metric name sharing the prefix
        value = rest.split()[0]
        yield labels, float(value)


def metric_sum(text: str, name: str) -> float:
    """Sum of all samples of ``name`` (over label sets) in Prometheus text; 0.0 when absent."""
    return sum(v for _, v in iter_metric(text, name))


def scrape(url: str, timeout: float = 10.0) -> str:
    """Text of ``<url>/metrics`` (raises FleetError on a non-200 answer)."""
    status, body = http_get(f"{url}/metrics", timeout=timeout)
    if status != 200:
        raise FleetError(f"GET {url}/metrics answered {status}")
    return body


_PROMPT_WORDS = (
    "alpha beta gamma delta river mountain forest city ocean music garden window light paper "
    "stone silver golden quick brown fox jumps lazy dog red green blue yellow"
).split()


def unique_prompt(words: int = 200, seed: int | None = None) -> str:
    """A prompt no earlier request shared a prefix with (random words, fresh seed by default).

    With the tiny-llama tokenizer ~1 token per word: ``words=200`` gives 200+ tokens, more than
    one 128-token prefix-cache block. Unique prompts keep prefix-cache and NIXL checks from
    being satisfied by an earlier test's cached blocks.
    """
    rng = random.Random(seed if seed is not None else uuid.uuid4().int)
    head = f"{rng.getrandbits(64):x}"  # differs in the first block, so nothing is shared
    return head + " " + " ".join(rng.choice(_PROMPT_WORDS) for _ in range(words))


if __name__ == "__main__":
    raise SystemExit(main())
