"""The model catalog: codex's ``model/list``, cached.

Every child lists the catalog when it starts, so asking for it normally
costs no request at all; the newest child's list wins. Past its age the
usable children are asked in turn, and the last known catalog serves while
none answers.
"""

from __future__ import annotations

import math

import trio

from bridge.peer import PeerClosed, RpcCallError
from bridge.protocol import ModelInfo

from .outcome import NoChildAvailable
from .pool import Pool


class ModelCatalog:
    """codex's model catalog as the children of ``pool`` list it."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self._models: list[ModelInfo] | None = None
        self._models_at = -math.inf

    async def models(self, *, max_age_s: float = 60.0) -> list[ModelInfo]:
        """codex's model catalog (``model/list``), cached for ``max_age_s``.

        When the cache is older than ``max_age_s`` the usable children are
        asked in turn, least busy first, each with a short deadline; one that
        does not answer is skipped (the liveness check deals with it), and
        the last known catalog is served if none answers. Raises
        :class:`NoChildAvailable` when there is no catalog to serve.
        """
        now = trio.current_time()
        for child in self.pool.usable_children:
            # A child lists the catalog at start; a newer child's catalog wins
            # at once (one replaced to load a changed config, say).
            if child.models is not None and (
                child.models_at is not None and child.models_at > self._models_at
            ):
                self._remember(list(child.models), child.models_at)
        if self._models is not None and now - self._models_at < max_age_s:
            return self._models
        failures = []
        for child in sorted(self.pool.usable_children, key=lambda c: c.load):
            try:
                models = await child.client.model_list(
                    timeout_s=self.pool.policy.liveness_timeout_s
                )
            except trio.TooSlowError:
                failures.append(f"{child.name}: no answer in time")
            except (PeerClosed, RpcCallError) as exc:
                failures.append(f"{child.name}: {exc}")
            else:
                self._remember(models, trio.current_time())
                return models
        if self._models is not None:
            return self._models
        if failures:
            raise NoChildAvailable("cannot list codex models: " + "; ".join(failures))
        raise NoChildAvailable(self.pool.unavailable_reason())

    def _remember(self, models: list[ModelInfo], at: float) -> None:
        self._models = models
        self._models_at = at
