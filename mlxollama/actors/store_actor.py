"""StoreActor: every store mutation the daemon makes, one at a time, on one thread.

The file lock already keeps writers apart across processes; the actor keeps the daemon's
own writers in order and off the HTTP threads (a create can run for minutes). On start it
removes what killed writers left (temp files, a killed create's blobs), unless another
process is writing to the store just then.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pykka
import structlog

from mlxollama.models.create import create
from mlxollama.recipes.buildspec import BuildSpec
from mlxollama.store.store import Store, StoredModel

log = structlog.get_logger("mlxollama.store")


class StoreActor(pykka.ThreadingActor):
    def __init__(self, store: Store):
        super().__init__()
        self.store = store

    def on_start(self) -> None:
        try:
            removed, freed = self.store.recover(wait=False)
        except Exception as e:  # a damaged store must not keep the daemon from starting
            log.warning("store.recover_failed", error=str(e))
            return
        if removed:
            log.info("store.recovered", blobs=removed, bytes=freed)

    def create(
        self, name: str, spec: BuildSpec, progress: Callable[[dict[str, Any]], None]
    ) -> StoredModel:
        return create(self.store, name, spec, progress)

    def copy(self, source: str, destination: str) -> StoredModel:
        return self.store.copy(source, destination)

    def delete(self, name: str) -> StoredModel:
        return self.store.remove(name)

    def gc(self) -> tuple[int, int]:
        return self.store.gc()
