"""Model lifecycle: notice a new registry version, verify it, load it beside the old, swap.

:class:`RegistryWatcher` polls the registry's newest version number every ``poll_s`` seconds
(a directory listing; cheap). When it changes, the newest version that verifies (sha256 against
its card, the Ed25519 signature when a key is configured, a model onnxruntime opens whose
contract matches its card) is loaded in a worker thread while the old model keeps answering,
then swapped in with one assignment (:meth:`serving.predictor.Predictor.reload`). Requests that
started on the old model finish on it; none waits and none fails. A corrupt or tampered
version is refused and logged, counted in ``fedpm_serving_models_refused_total``, and the
model serving goes on; it is not tried again until the registry's newest version changes.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial

import anyio.to_thread
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from models.errors import RegistryError
from models.registry import FileRegistry
from serving.errors import ModelNotLoadedError
from serving.metrics import ServingMetrics
from serving.predictor import Predictor

logger = logging.getLogger(__name__)


class RegistryWatcher:
    """Keeps a :class:`Predictor` on the newest verified version of a registry."""

    def __init__(
        self,
        registry: FileRegistry,
        predictor: Predictor,
        metrics: ServingMetrics,
        *,
        poll_s: float,
        onnx_threads: int = 1,
        verify_key: Ed25519PublicKey | None = None,
    ) -> None:
        self.registry = registry
        self.predictor = predictor
        self.metrics = metrics
        self.poll_s = poll_s
        self.onnx_threads = onnx_threads
        self.verify_key = verify_key
        self._seen: int | None = None

    async def check(self) -> None:
        """Reload if the registry's newest version changed since the last check."""
        try:
            latest = await anyio.to_thread.run_sync(self.registry.latest_version)
        except (OSError, RegistryError) as exc:
            logger.warning("cannot read registry %s: %s", self.registry.root, exc)
            return
        if latest is None or latest == self._seen:
            return
        self._seen = latest
        before = self.predictor.model
        refused: list[str] = []
        load = partial(
            self.predictor.reload,
            self.registry,
            onnx_threads=self.onnx_threads,
            verify_key=self.verify_key,
            refused_log=refused,
        )
        try:
            after = await anyio.to_thread.run_sync(load)
        except ModelNotLoadedError as exc:
            logger.error("no model to serve: %s", exc)
            after = None
        finally:  # each refusal is logged at ERROR by load_latest_valid
            self.metrics.models_refused.inc(len(refused))
        if after is not None and (before is None or before.card.sha256 != after.card.sha256):
            self.metrics.model_swaps.inc()

    async def run(self) -> None:
        """Check at start, then every ``poll_s`` seconds, until cancelled."""
        while True:
            await self.check()
            await asyncio.sleep(self.poll_s)
