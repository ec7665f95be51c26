"""Bring a run's models to life: managed servers (when the config asks) and the agent and reward clients.

    with model_servers(cfg, run_id) as endpoints:          # in the flow: servers live for the whole run
        ...
        async with open_backends(cfg, endpoints) as (agents, reward):   # in each task's event loop
            ...

Servers are started once per flow run; clients are per event loop (an HTTP client cannot cross loops).
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator, Iterator

from toa_core.backends.factory import aclose_all, build_agents, build_reward

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from toa_core.backends.factory import ServedEndpoint
    from runconfig import RunConfig


def local_run_dir(run_id: str) -> Path:
    """Local folder of a run (server logs land in its servers/, uploaded to the run folder when they stop)."""
    from infra.run_ids import check_run_id

    from toa_core.folders import private_scratch_root

    workdir = os.environ.get("TOAFLOW_WORKDIR")
    root = Path(workdir) if workdir else private_scratch_root("toaflow")  # private: never another user's folder
    path = root / "runs" / check_run_id(run_id)
    path.mkdir(parents=True, exist_ok=True)
    return path


def detached_servers_folder(cfg: "RunConfig") -> Path:
    """Where `toa servers up --config C` records the servers it started on this host (state.json, logs)."""
    from infra.run_ids import run_id_slug

    return local_run_dir(f"servers-{run_id_slug(cfg.name)}")


def running_detached_servers(cfg: "RunConfig") -> dict[str, "ServedEndpoint"] | None:
    """The endpoints of every server of `cfg` that `toa servers up` started on this host, when all of them are
    running and healthy; else None."""
    from infra.servers import detached_status
    from toa_core.backends.factory import ServedEndpoint

    records = {record["name"]: record for record in detached_status(detached_servers_folder(cfg) / "state.json")}
    wanted = [server.name for server in cfg.servers.servers]
    if not wanted or not all(name in records and records[name]["healthy"] for name in wanted):
        return None
    return {name: ServedEndpoint(records[name]["base_url"], records[name]["model_id"]) for name in wanted}


@contextlib.contextmanager
def model_servers(cfg: "RunConfig", run_id: str) -> Iterator[dict[str, "ServedEndpoint"]]:
    """The servers named in `servers` when `servers.managed` is true, on this host; yield {server name: endpoint}.

    Finds them when `toa servers up` started them here (all of them, healthy): those are used and left running.
    Otherwise starts them for the block, stops only the processes it started, and copies their logs into
    `runs/<run_id>/servers/` in the store. (A shard flow run of executor `workers` calls this on its own host.)
    """
    from infra.run_ids import check_run_id

    check_run_id(run_id)  # it names the local log folder and the store folder the logs are copied to
    if not cfg.servers.managed or not cfg.servers.servers:
        yield {}
        return
    from infra.servers import managed_servers
    from infra.store import open_store

    found = running_detached_servers(cfg)
    if found is not None:
        log.info("using the servers `toa servers up` started on this host: %s",
                 ", ".join(f"{name} at {endpoint.base_url}" for name, endpoint in found.items()))
        yield found
        return

    log_dir = local_run_dir(run_id)
    try:
        with managed_servers(cfg.servers, log_dir) as endpoints:
            yield dict(endpoints)
    finally:
        with contextlib.suppress(Exception):  # logs are a courtesy; never mask the run's own error
            open_store(cfg.store).upload_dir(log_dir / "servers", f"runs/{run_id}/servers")


@contextlib.asynccontextmanager
async def open_backends(cfg: "RunConfig", endpoints: dict[str, "ServedEndpoint"] | None = None
                        ) -> AsyncIterator[tuple[list, object]]:
    """Build the agents (in configured order) and the batched reward model for the current event loop."""
    agents = build_agents(cfg.models, endpoints_override=endpoints or None)
    reward = build_reward(cfg.reward, endpoints_override=endpoints or None)
    try:
        yield agents, reward
    finally:
        await aclose_all(agents, reward)
