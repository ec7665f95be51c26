"""Publishing results people would rather see than read: every table and plot goes to the run folder in the
store and, when a Prefect run is active, to the Prefect UI as an artifact. One place, used by every flow.

Artifact keys name a kind of result, never a run (`synthesis-models`, `training-metrics`, `evaluation-mini`,
`promotion`, ...): each key then keeps a history across runs in the UI's Artifacts page, and the run id goes in
the description. A flow run publishes each key once.
"""
from __future__ import annotations

import base64
import io
import logging
import re
import time
from typing import Any, Sequence

from toa_core.credentials import redact, redact_text
from infra.store import Store

log = logging.getLogger(__name__)


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow only lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


class PhaseTimer:
    """Where a report's time goes: `lap("plot")` after each phase, `summary()` for the log line."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._last = self._start = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - self._last
        self._last = now

    def summary(self) -> str:
        total = time.perf_counter() - self._start
        return f"{total:.1f} s (" + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.phases.items()) + ")"


def _in_prefect_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def figure_png(figure: Any) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it (figures leak memory when left open)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def publish_png(store: Store, key: str, png: bytes, *, title: str, artifact: str | None = None) -> str:
    """Save a PNG under `key` in the store and show it in the Prefect UI; returns its store URI."""
    store.write_bytes(key, png)
    uri = redact_text(store.uri(key))
    title = redact_text(title)
    if artifact and _in_prefect_run():
        from prefect.artifacts import create_markdown_artifact

        encoded = base64.b64encode(png).decode("ascii")
        create_markdown_artifact(
            markdown=f"### {title}\n\n![{title}](data:image/png;base64,{encoded})\n\nSaved at `{uri}`",
            key=artifact_key(artifact), description=title,
        )
    return uri


def publish_table(store: Store | None, key: str | None, rows: Sequence[dict[str, Any]], *, title: str,
                  artifact: str | None = None) -> None:
    """Save rows as JSON in the store (when a key is given) and show them as a Prefect table artifact."""
    rows = redact(list(rows))
    if store is not None and key:
        store.write_json(key, list(rows))
    if artifact and _in_prefect_run():
        from prefect.artifacts import create_table_artifact

        create_table_artifact(table=list(rows), key=artifact_key(artifact), description=title)


def publish_markdown(store: Store | None, key: str | None, markdown: str, *, title: str,
                     artifact: str | None = None) -> None:
    """Save a markdown report in the store and show it as a Prefect markdown artifact."""
    markdown = redact_text(markdown)
    if store is not None and key:
        store.write_text(key, markdown)
    if artifact and _in_prefect_run():
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown=markdown, key=artifact_key(artifact), description=title)


class ProgressReporter:
    """A Prefect progress artifact (0-100 %) that is updated as work finishes; a no-op outside a Prefect run."""

    def __init__(self, total: int, *, artifact: str, description: str) -> None:
        self.total = max(total, 1)
        self.done = 0
        self._id = None
        if _in_prefect_run():
            from prefect.artifacts import create_progress_artifact

            try:
                self._id = create_progress_artifact(progress=0.0, key=artifact_key(artifact), description=description)
            except Exception as error:  # progress is a courtesy: never fail a run for it
                log.warning("could not create progress artifact: %s", error)

    def advance(self, count: int = 1) -> None:
        self.set(self.done + count)

    def set(self, done: int, description: str | None = None) -> None:
        """Move the bar to `done` of `total`, and show `description` with it when given."""
        self.done = done
        if self._id is None:
            return
        from prefect.artifacts import update_progress_artifact

        try:
            update_progress_artifact(artifact_id=self._id, progress=min(100.0, 100.0 * self.done / self.total),
                                     description=description)
        except Exception as error:
            log.warning("could not update progress artifact: %s", error)
