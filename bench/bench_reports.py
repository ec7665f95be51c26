"""Where does a report task's time go, and what does a busy Prefect database cost it?

    .venv/bin/python bench/bench_reports.py            # 400 prompts, a 20 s database lock
    .venv/bin/python bench/bench_reports.py --quick    # 20 prompts, a 2 s lock

One temporary Prefect server (its own SQLite database), one synthetic synthesis run in a temporary store
(prompts x 12 candidates over 3 models, written as the real shard files), and the real `report_synthesis` code
inside a flow run, measured side by side:
  free:    the report as it runs normally; its phases as the task logs them (read shards, tables, plot,
           publish = store writes + Prefect artifacts);
  locked:  the same report while another connection holds the server's SQLite write lock for L seconds from the
           moment the report starts: the artifact calls wait for the lock (the server waits up to its busy timeout,
           30-60 s, before answering 503, and the client then retries with backoff).
The issue that motivated this saw a report take 64 s of a 76 s tiny run with "database is locked" in the server
log; the free cell shows what the report itself costs, the locked cell where such a minute comes from.
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine  # noqa: E402

BIN = Path(sys.executable).parent
PHASE = re.compile(r"([a-z][a-z ]*?) ([\d.]+) s")


def write_synthetic_run(store, run_id: str, prompts: int, per_prompt: int = 12, shard_size: int = 50) -> list[dict]:
    """Shard files of `prompts` x `per_prompt` scored candidates, as the sample stage writes them; the outcomes."""
    from tasks.synthesis import shard_key
    from toa_core.candidate_table import candidates_to_table, table_to_parquet_bytes
    from toa_core.records import Candidate

    rng = random.Random(0)
    outcomes = []
    for index, start in enumerate(range(0, prompts, shard_size)):
        rows = [Candidate(prompt_id=f"p{p}", candidate_id=f"p{p}-{c}", parent_id=None if c < 3 else f"p{p}-{c - 3}",
                          kind="fresh" if c < 3 else "refine", model=f"model-{c % 3}", depth=1 + c // 3,
                          text="an answer " * rng.randint(5, 60), reward=rng.gauss(0, 1), reward_norm=None,
                          prompt_tokens=rng.randint(20, 400), completion_tokens=rng.randint(10, 300), latency_s=0.1,
                          finish_reason="stop", strategy="toa", seed=c)
                for p in range(start, min(start + shard_size, prompts)) for c in range(per_prompt)]
        uri = store.write_bytes(shard_key(run_id, index), table_to_parquet_bytes(candidates_to_table(rows)))
        count = min(shard_size, prompts - start)
        outcomes.append({"index": index, "uri": uri, "prompts": count, "candidates": len(rows), "errors": 0,
                         "retries": 0, "resumed_prompts": 0, "skipped": False, "new_candidates": len(rows),
                         "new_errors": 0})
    return outcomes


class PhaseCapture(logging.Handler):
    """Keeps the report task's "synthesis report of run r: 1.7 s (read shards 0.0 s, ...)" line."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("synthesis report of run"):
            self.lines.append(message)


def hold_write_lock(database: Path, seconds: float, locked: threading.Event) -> None:
    """Hold SQLite's write lock on `database` for `seconds` (what a long write transaction of another process does)."""
    connection = sqlite3.connect(database, timeout=120, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        locked.set()
        time.sleep(seconds)
        connection.execute("COMMIT")
    finally:
        connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 prompts and a 2 s lock (under a minute)")
    parser.add_argument("--prompts", type=int, default=None)
    parser.add_argument("--lock-s", type=float, default=None, help="how long the database lock is held")
    args = parser.parse_args()
    prompts = args.prompts or (20 if args.quick else 400)
    lock_s = args.lock_s if args.lock_s is not None else (2.0 if args.quick else 20.0)

    from infra.servers import free_port

    scratch = Path(tempfile.mkdtemp(prefix="toaflow-bench-reports-"))
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    home = scratch / "prefect"
    os.environ.update(PREFECT_HOME=str(home), PREFECT_API_URL=api_url, PREFECT_SERVER_ANALYTICS_ENABLED="false",
                      PREFECT_LOGGING_TO_API_ENABLED="false")
    server_env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    log = open(scratch / "server.log", "wb")
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=server_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"the Prefect server did not start; see {scratch / 'server.log'}")
            time.sleep(0.5)

        from prefect import flow

        from infra.manifest import Manifest
        from infra.store import open_store
        from runconfig import load_config
        from tasks.synthesis import report_synthesis

        cfg = load_config(REPO / "configs" / "tiny.yaml", {"store.root": str(scratch / "store")})
        store = open_store(cfg.store)
        Manifest.open(store, "bench", config=cfg.model_dump(mode="json"))
        outcomes = write_synthetic_run(store, "bench", prompts)
        ranking = {"datasets": {}, "counts": {"prompts": prompts}}
        capture = PhaseCapture()
        logging.getLogger("prefect").addHandler(capture)

        @flow(name="bench-reports")
        def reports() -> dict[str, float]:
            report_synthesis.fn(cfg, "bench", {"prompts": prompts}, outcomes, ranking)  # warm-up: imports
            capture.lines.clear()
            walls = {}
            for cell in ("free", "locked"):
                locker = None
                if cell == "locked":
                    locked = threading.Event()
                    locker = threading.Thread(target=hold_write_lock, args=(home / "prefect.db", lock_s, locked))
                    locker.start()
                    locked.wait(60)
                started = time.perf_counter()
                report_synthesis.fn(cfg, "bench", {"prompts": prompts}, outcomes, ranking)
                walls[cell] = time.perf_counter() - started
                if locker is not None:
                    locker.join()
            return walls

        walls = reports()
        phases = [dict((name.strip(), float(value)) for name, value in PHASE.findall(line.split("(", 1)[1]))
                  for line in capture.lines]
    finally:
        from infra.processes import stop_process_group

        stop_process_group(server, grace_s=20.0)
        log.close()
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"machine: {machine()}")
    print(f"synthetic run: {prompts} prompts x 12 candidates, 3 models; SQLite lock {lock_s:g} s in the locked cell")
    print("(one untimed report first, so both cells find matplotlib and pyarrow imported)\n")
    names = list(phases[0])
    print(f"  {'cell':8} {'wall s':>8} " + " ".join(f"{name:>12}" for name in names))
    for cell, cell_phases in zip(("free", "locked"), phases):
        print(f"  {cell:8} {walls[cell]:8.2f} " + " ".join(f"{cell_phases.get(name, 0.0):12.2f}" for name in names))
    free, locked = phases
    share = free["publish"] / walls["free"] if walls["free"] else 0.0
    # The lock starts with the report: publishing meets what is left of it once the shards are read and drawn.
    left = max(lock_s - sum(value for name, value in locked.items() if name != "publish"), 1e-9)
    waited = locked["publish"] - free["publish"]
    print(f"\n  free: publishing (store writes + Prefect artifacts) is {share:.0%} of the report")
    print(f"  locked: publishing waited {waited:.1f} s, the {left:.1f} s the lock still had to run "
          f"(ratio {waited / left:.2f})")
    print(f"SUMMARY report_free_s={walls['free']:.2f} publish_share={share:.2f} report_locked_s={walls['locked']:.2f} "
          f"publish_wait_over_lock_left={waited / left:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
