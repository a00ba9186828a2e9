"""The model lifecycle on the device: which model serves, and every change to that.

One :class:`ModelLifecycle` per agent. It holds the serving model (the one place inference
reaches it, so a swap lands between two batches), handles the control topics, runs activations
(verify, features, load, warm up, golden, shadow, swap, grace, keep or roll back) acking every
step, and keeps the drift monitor of the serving model.

Concurrency: every public method runs on the event loop. Disk, loading and the candidate's
inferences run on one lifecycle worker thread, never on the inference thread, so the serving model
keeps answering during an activation. At most one activation runs at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from edge_agent.config import AgentConfig
from edge_agent.contracts.baseline import Baseline
from edge_agent.contracts.payloads import (
    AckPayload,
    ActivateCommand,
    AlertPayload,
    DesiredStateCommand,
    DriftSummaryPayload,
    OfferCommand,
    OutputValue,
    RollbackCommand,
    SequencedPayload,
)
from edge_agent.contracts.topics import DeviceTopics
from edge_agent.drift import DriftMonitor, DriftReport
from edge_agent.errors import ModelError
from edge_agent.health import Health, LatencyWindow
from edge_agent.lifecycle import activation
from edge_agent.lifecycle.activation import ActivationSettings, StepFailed
from edge_agent.lifecycle.commands import Chunk, Refusal, read_message
from edge_agent.lifecycle.grace import Grace, GraceGates
from edge_agent.lifecycle.shadow import ShadowRun, agreeing_rows
from edge_agent.lifecycle.store import ModelStore
from edge_agent.model import LoadedModel
from edge_agent.mqtt import MqttMessage

__all__ = ["ModelLifecycle", "Serving"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Details = dict[str, float | int | str]
# Payloads to store in the outbox: (topic, factory taking the sequenced fields).
Records = list[tuple[str, Callable[..., SequencedPayload]]]
Send = Callable[[Records], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Serving:
    """A model ready to answer, with what the lifecycle needs beside it."""

    model: LoadedModel
    baseline: Baseline | None
    sha256: str | None

    @property
    def version(self) -> str:
        return self.model.manifest.version

    @property
    def name(self) -> str:
        return self.model.manifest.name


@dataclass(frozen=True)
class _Request:
    """One activation asked for: by whom (for the acks) and with which options."""

    cmd_id: str
    command: str
    model: str
    version: str
    shadow_windows: int
    grace_s: float


class _AckContext:
    """Acks one activation's steps, each naming the candidate and the serving version."""

    def __init__(self, owner: ModelLifecycle, request: _Request, previous: str | None) -> None:
        self.owner = owner
        self.request = request
        self.previous = previous

    async def __call__(
        self, step: str, ok: bool = True, reason: str | None = None, details: Details | None = None
    ) -> None:
        r = self.request
        await self.owner.ack(
            r.cmd_id, r.command, step, ok, reason, r.model, r.version, self.previous, details
        )


def chunk_list(indexes: Iterable[int]) -> str:
    """``have_chunks`` as the protocol writes it: comma-separated indexes, empty for none."""
    return ",".join(str(index) for index in indexes)


class ModelLifecycle:
    """Construct (no I/O), ``await start()`` to load the first model, then run ``run()``."""

    def __init__(
        self,
        config: AgentConfig,
        topics: DeviceTopics,
        health: Health,
        *,
        send: Send,
        on_swap: Hook,
    ) -> None:
        self.config = config
        self.topics = topics
        self.health = health
        self.store = ModelStore(
            config.device.state_dir / "models", keep_previous=config.lifecycle.keep_previous
        )
        self.settings = ActivationSettings(
            public_key=config.model.public_key,
            features=config.model.features,
            runner=config.model.runner,
            threads=config.model.threads,
        )
        self._send = send
        self._on_swap = on_swap
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="lifecycle")
        self._serving: Serving | None = None
        self._latency = LatencyWindow()
        self._job: asyncio.Task[None] | None = None
        self._job_request: _Request | None = None
        self._shadow: ShadowRun | None = None
        self._shadow_ready = asyncio.Event()
        self._grace: Grace | None = None
        self._grace_model: LoadedModel | None = None
        self._grace_over = asyncio.Event()
        self._grace_previous: Serving | None = None
        self._desired: DesiredStateCommand | None = None
        self._drift: DriftMonitor | None = None
        self._group: asyncio.TaskGroup | None = None

    # ------------------------------------------------------------------------ serving model

    @property
    def model(self) -> LoadedModel | None:
        """The model that answers the next batch."""
        return self._serving.model if self._serving is not None else None

    def observe_missing(self, features: list[str]) -> None:
        """The data path had no value for these model features in a row or window."""
        if self._drift is not None:
            self._drift.missing(features)

    def observe(
        self,
        model: LoadedModel,
        rows: npt.NDArray[np.float32],
        outputs: list[dict[str, OutputValue]],
        latency_s: float,
    ) -> None:
        """A batch ``model`` answered (called on the event loop right after it)."""
        serving = self._serving
        if serving is None or model is not serving.model:
            return  # answered by the model just swapped out: already counted for it
        self._latency.add(latency_s)
        if self._drift is not None:
            self._drift.update(rows, outputs)
        if self._shadow is not None:
            self._shadow.offer(rows, outputs)
            self._shadow_ready.set()
        grace = self._grace
        if (
            grace is not None
            and model is self._grace_model
            and grace.failure is None
            and grace.answered(outputs, latency_s) is not None
        ):
            self._grace_over.set()

    def observe_error(self, model: LoadedModel, windows: int) -> None:
        """``model`` failed to answer ``windows`` windows."""
        grace = self._grace
        if (
            grace is not None
            and model is self._grace_model
            and grace.failure is None
            and grace.failed(windows) is not None
        ):
            self._grace_over.set()

    # ------------------------------------------------------------------------- start / run

    async def start(self) -> LoadedModel:
        """Load the first model: the store's active version, else the configured bundle.

        Raises ModelError when neither can serve.
        """
        await self._off(self.store.open)
        pointer = await self._off(self.store.active)
        if pointer is not None and self.store.has(pointer.model, pointer.version):
            path = self.store.bundle_path(pointer.model, pointer.version)
            try:
                serving = await self._prepare(path, None)
            except StepFailed as err:
                logger.warning(
                    "Stored model %s@%s cannot serve (%s); trying the configured bundle",
                    pointer.model,
                    pointer.version,
                    err,
                )
            else:
                self._install(serving)
                return serving.model
        bundle = self.config.model.bundle
        name, version = await self._off(partial(self.store.import_file, bundle))
        try:
            serving = await self._prepare(self.store.bundle_path(name, version), None)
        except StepFailed as err:
            raise ModelError(f"the configured bundle {bundle} cannot serve: {err}") from err
        await self._off(partial(self.store.set_active, name, version))
        self._install(serving)
        return serving.model

    def _install(self, serving: Serving) -> None:
        self._serving = serving
        self._latency = LatencyWindow()
        if not self.settings.window_known:
            # The window builder is made for the first model's features and window spec: later
            # models must take the same.
            manifest = serving.model.manifest
            self.settings = dataclasses.replace(
                self.settings,
                features=self.settings.features or manifest.feature_names,
                window=manifest.window,
                window_known=True,
            )
        if self.config.drift.enabled:
            self._drift = DriftMonitor(
                serving.model.manifest,
                serving.baseline,
                window_s=self.config.drift.window_s,
                min_count=self.config.drift.min_count,
                start=time.time(),
            )

    async def run(self) -> None:
        """Publish drift summaries and host activations until cancelled."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            await self._drift_loop()

    async def stop(self) -> None:
        """Cancel an activation in progress and publish the last, partial drift window."""
        if self._job is not None and not self._job.done():
            self._job.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._job
        if self._drift is not None and self._drift.window_start < time.time():
            await self._publish_drift(self._drift.summary(time.time()))

    def close(self) -> None:
        """Release the lifecycle worker (after the agent's tasks ended)."""
        self._executor.shutdown(wait=True)

    async def handle(self, message: MqttMessage) -> None:
        """Act on one message from the control topics; never raises (the agent keeps serving)."""
        try:
            await self._handle(message)
        except Exception as err:  # a supervisor: a disk error on one command must not stop us
            logger.exception("Control message on %s failed", message.topic)
            self.health.count("lifecycle.failures")
            with contextlib.suppress(Exception):
                await self.ack("unknown", "unknown", "refused", False, f"command failed: {err}")

    async def _handle(self, message: MqttMessage) -> None:
        found = read_message(self.topics, message.topic, message.payload)
        if found is None:
            if message.topic == self.topics.desired:
                # The fleet cleared the desired state: a bundle that arrives later is kept, and
                # activated only when a command asks.
                self._desired = None
            return
        if isinstance(found, Refusal):
            self.health.count("lifecycle.refused_commands")
            logger.warning(
                "Refused a %s message on %s: %s", found.command, message.topic, found.reason
            )
            await self.ack(found.cmd_id, found.command, "refused", False, found.reason)
            return
        if isinstance(found, Chunk):
            await self._on_chunk(found)
        elif isinstance(found, OfferCommand):
            await self._on_offer(found)
        elif isinstance(found, DesiredStateCommand):
            await self._on_desired(found)
        elif isinstance(found, ActivateCommand):
            await self._on_activate(found)
        elif isinstance(found, RollbackCommand):
            await self._on_rollback(found)

    # ----------------------------------------------------------------------------- commands

    async def _on_desired(self, desired: DesiredStateCommand) -> None:
        self._desired = desired
        serving = self._serving
        request = self._request_from(desired)
        previous = serving.version if serving else None
        if serving is not None and (serving.name, serving.version) == (
            desired.model,
            desired.version,
        ):
            await self.ack(
                desired.cmd_id, "desired", "active", True, None, desired.model,
                desired.version, previous, {"already": 1},
            )  # fmt: skip
            return
        job = self._job_request
        if job is not None and (job.model, job.version) == (desired.model, desired.version):
            return  # already on its way (a reconnect delivered the retained state again)
        refused = await self._off(partial(self.store.refused, desired.sha256))
        if refused is not None:
            await self.ack(
                desired.cmd_id, "desired", "refused", False,
                f"this bundle was refused earlier ({refused}); send activate to retry",
                desired.model, desired.version, previous,
            )  # fmt: skip
            return
        if await self._off(partial(self.store.has, desired.model, desired.version, desired.sha256)):
            await self._begin(request)
            return
        transfer = await self._off(
            partial(self.store.transfer_by_sha, desired.model, desired.version, desired.sha256)
        )
        have: list[int] = transfer.have if transfer is not None else []
        await self.ack(
            desired.cmd_id, "desired", "need_bundle", True, None, desired.model,
            desired.version, previous, {"have_chunks": chunk_list(have)},
        )  # fmt: skip

    async def _on_offer(self, offer: OfferCommand) -> None:
        previous = self._serving.version if self._serving else None
        if await self._off(partial(self.store.has, offer.model, offer.version, offer.sha256)):
            total = -(-offer.size // offer.chunk_size)
            await self.ack(
                offer.cmd_id, "offer", "offer", True, None, offer.model, offer.version,
                previous, {"have_chunks": chunk_list(range(total)), "total": total},
            )  # fmt: skip
            await self.ack(
                offer.cmd_id, "offer", "received", True, None, offer.model, offer.version,
                previous, {"already": 1},
            )  # fmt: skip
            await self._after_received(offer.model, offer.version, offer.sha256)
            return
        transfer = await self._off(partial(self.store.begin_transfer, offer))
        await self.ack(
            offer.cmd_id, "offer", "offer", True, None, offer.model, offer.version, previous,
            {"have_chunks": chunk_list(transfer.have), "total": transfer.total},
        )  # fmt: skip
        if transfer.complete:
            await self._finish_transfer(offer.model, offer.version)

    async def _on_chunk(self, chunk: Chunk) -> None:
        payload = chunk.payload
        transfer = await self._off(partial(self.store.transfer, payload.model, payload.version))
        cmd_id = transfer.offer.cmd_id if transfer is not None else "unknown"
        previous = self._serving.version if self._serving else None
        if chunk.reason is not None:
            self.health.count("lifecycle.bad_chunks")
            await self.ack(
                cmd_id, "transfer", "chunk", False, chunk.reason, payload.model,
                payload.version, previous, {"index": payload.index},
            )  # fmt: skip
            return
        try:
            transfer = await self._off(
                partial(
                    self.store.add_chunk, payload.model, payload.version, payload.index, chunk.data
                )
            )
        except ModelError as err:
            await self.ack(
                cmd_id, "transfer", "chunk", False, str(err), payload.model, payload.version,
                previous, {"index": payload.index},
            )  # fmt: skip
            return
        if transfer.complete:
            await self._finish_transfer(payload.model, payload.version)

    async def _finish_transfer(self, model: str, version: str) -> None:
        transfer = await self._off(partial(self.store.transfer, model, version))
        cmd_id = transfer.offer.cmd_id if transfer is not None else "unknown"
        previous = self._serving.version if self._serving else None
        try:
            digest = await self._off(partial(self.store.finish_transfer, model, version))
        except ModelError as err:
            await self.ack(cmd_id, "offer", "received", False, str(err), model, version, previous)
            return
        logger.info("Received bundle %s@%s", model, version)
        await self.ack(cmd_id, "offer", "received", True, None, model, version, previous)
        await self._after_received(model, version, digest)

    async def _after_received(self, model: str, version: str, sha256: str) -> None:
        desired = self._desired
        if desired is not None and (desired.model, desired.version, desired.sha256) == (
            model,
            version,
            sha256,
        ):
            await self._on_desired(desired)

    async def _on_activate(self, command: ActivateCommand) -> None:
        request = self._request_from(command)
        previous = self._serving.version if self._serving else None
        if not await self._off(partial(self.store.has, command.model, command.version)):
            await self.ack(
                command.cmd_id, "activate", "refused", False,
                f"{command.model}@{command.version} is not in the model store; offer it first",
                command.model, command.version, previous,
            )  # fmt: skip
            return
        sha = await self._off(partial(self.store.sha256, command.model, command.version))
        if sha is not None:
            await self._off(partial(self.store.clear_refused, sha))  # an explicit retry
        await self._begin(request)

    async def _on_rollback(self, command: RollbackCommand) -> None:
        serving = self._serving
        current = serving.version if serving else None
        name = serving.name if serving else "unknown"
        if self._job is not None and not self._job.done():
            # During an activation: stop it; in its grace period that means going back.
            self._job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._job
            if self._grace_previous is not None:
                await self._revert("rollback command", command.cmd_id, "rollback")
            else:
                await self.ack(
                    command.cmd_id, "rollback", "rolled_back", True,
                    "the activation in progress was stopped before its swap",
                    name, current, current, {"serving": current or ""},
                )  # fmt: skip
            return
        pointer = await self._off(self.store.active)
        target = command.to_version or (pointer.previous if pointer else None)
        if target is None or not await self._off(partial(self.store.has, name, target)):
            await self.ack(
                command.cmd_id, "rollback", "refused", False,
                f"no {'version ' + target if target else 'previous version'} of {name} "
                "in the model store",
                name, current, current,
            )  # fmt: skip
            return
        try:
            candidate = await self._prepare(self.store.bundle_path(name, target), None)
        except StepFailed as err:
            await self.ack(
                command.cmd_id, "rollback", "rolled_back", False, str(err), name, current, current
            )
            return
        await self._off(partial(self.store.restore, name, target))
        await self._swap(candidate)
        logger.info("Model %s@%s rolled back to %s on command", name, current, target)
        await self.ack(
            command.cmd_id, "rollback", "rolled_back", True, None, name, current, target,
            {"serving": target},
        )  # fmt: skip

    def _request_from(self, command: ActivateCommand | DesiredStateCommand) -> _Request:
        lifecycle = self.config.lifecycle
        return _Request(
            cmd_id=command.cmd_id,
            command=command.kind,
            model=command.model,
            version=command.version,
            shadow_windows=command.shadow_windows or lifecycle.shadow_windows,
            grace_s=command.grace_s if command.grace_s is not None else lifecycle.grace_s,
        )

    # --------------------------------------------------------------------------- activation

    async def _begin(self, request: _Request) -> None:
        previous = self._serving.version if self._serving else None
        running = self._job_request
        if self._job is not None and not self._job.done() and running is not None:
            await self.ack(
                request.cmd_id, request.command, "refused", False,
                f"the activation of {running.model}@{running.version} is in progress",
                request.model, request.version, previous,
            )  # fmt: skip
            return
        assert self._group is not None, "run() first"
        self._job_request = request
        self._job = self._group.create_task(
            self._activate(request), name=f"activate-{request.model}-{request.version}"
        )

    async def _activate(self, request: _Request) -> None:
        """Supervise one activation: whatever goes wrong in it, the agent keeps serving."""
        try:
            await self._activate_steps(request)
        except Exception as err:  # a supervisor: one failed activation must not stop the agent
            logger.exception("Activation of %s@%s failed", request.model, request.version)
            self.health.count("lifecycle.failures")
            previous = self._serving.version if self._serving else None
            await self.ack(
                request.cmd_id, request.command, "refused", False, f"activation failed: {err}",
                request.model, request.version, previous,
            )  # fmt: skip
        finally:
            self._job_request = None

    async def _activate_steps(self, request: _Request) -> None:
        ack = _AckContext(self, request, self._serving.version if self._serving else None)
        path = self.store.bundle_path(request.model, request.version)
        sha = await self._off(partial(self.store.sha256, request.model, request.version))
        try:
            candidate = await self._prepare(path, ack, sha)
            if request.shadow_windows > 0:
                await self._run_shadow(candidate, request.shadow_windows, ack)
        except StepFailed as err:
            logger.warning(
                "Model %s@%s refused at step %s: %s",
                request.model,
                request.version,
                err.step,
                err.reason,
            )
            self.health.count("lifecycle.refused")
            if sha is not None:
                await self._off(partial(self.store.mark_refused, sha, f"{err.step}: {err.reason}"))
            return
        previous = self._serving
        previous_p99 = None
        if len(self._latency) >= self.config.lifecycle.min_windows:
            previous_p99 = self._latency.percentiles_ms()[1]
        await self._swap(candidate)
        self.health.count("lifecycle.swaps")
        logger.info(
            "Model %s@%s active (was %s)",
            request.model,
            request.version,
            previous.version if previous else "none",
        )
        await ack("active")
        await self._run_grace(candidate, previous, previous_p99, request, ack)

    async def _prepare(
        self, path: Path, ack: _AckContext | None, sha: str | None = None
    ) -> Serving:
        """Verify, check, load, warm up and golden-check a bundle, acking each step."""

        async def step(name: str, call: Callable[[], T]) -> T:
            try:
                result = await self._off(call)
            except StepFailed as err:
                if ack is not None:
                    await ack(err.step, False, err.reason)
                raise
            return result

        bundle = await step("verified", partial(activation.verify, path, self.settings))
        baseline = await step("verified", partial(activation.read_baseline, bundle))
        if ack is not None:
            await ack("verified", details={"signed": int(bundle.signed)})
        await step("features", partial(activation.check_features, bundle, self.settings))
        if ack is not None:
            await ack("features")
        model = await step("loaded", partial(activation.load, bundle, self.settings))
        if ack is not None:
            await ack("loaded", details={"format": model.runner.format})
        await step("warmed", partial(activation.warm, model))
        if ack is not None:
            await ack("warmed")
        rows = await step("golden", partial(activation.run_golden, model))
        if ack is not None:
            await ack("golden", details={"rows": rows})
        return Serving(model, baseline, sha)

    async def _run_shadow(self, candidate: Serving, windows: int, ack: _AckContext) -> None:
        golden = activation.read_golden(candidate.model.bundle)
        shadow = ShadowRun(windows, dict(golden.tolerance) if golden is not None else {})
        self._shadow = shadow
        try:
            while not shadow.done:
                if not shadow.pending:
                    self._shadow_ready.clear()
                    await self._shadow_ready.wait()
                    continue
                rows, served = shadow.pending.popleft()
                try:
                    answers = await self._off(partial(candidate.model.predict, rows))
                except ModelError as err:
                    reason = f"the candidate failed on live windows: {err}"
                    raise StepFailed("shadow", reason) from err
                shadow.record(len(served), agreeing_rows(served, answers, shadow.tolerance))
        except StepFailed as err:
            await ack("shadow", False, err.reason, self._shadow_details(shadow))
            raise
        finally:
            self._shadow = None
            self.health.count("lifecycle.shadow_skipped", shadow.skipped)
        minimum = self.config.lifecycle.shadow_min_agreement
        if shadow.agreement < minimum:
            reason = f"agreement {shadow.agreement:.1%} is below {minimum:.1%}"
            await ack("shadow", False, reason, self._shadow_details(shadow))
            raise StepFailed("shadow", reason)
        await ack("shadow", details=self._shadow_details(shadow))

    @staticmethod
    def _shadow_details(shadow: ShadowRun) -> Details:
        return {
            "windows": shadow.windows,
            "agreeing": shadow.agreeing,
            "agreement": round(shadow.agreement, 6),
            "skipped": shadow.skipped,
        }

    async def _swap(self, candidate: Serving) -> None:
        """Make ``candidate`` answer from the next batch on; flush the old model's drift."""
        old_drift = self._drift
        self._install(candidate)
        if old_drift is not None:
            await self._publish_drift(old_drift.summary(time.time()))
        if self._group is not None:
            # The retained status names the serving model; publishing it waits for a PUBACK,
            # which must not hold the activation up while the broker is away.
            self._group.create_task(self._announce_swap(), name="status-after-swap")

    async def _announce_swap(self) -> None:
        try:
            await self._on_swap()
        except Exception as err:  # a supervisor: the status is published again on reconnect
            self.health.problem_once("status-after-swap", "Status not published: %s", err)

    async def _run_grace(
        self,
        candidate: Serving,
        previous: Serving | None,
        previous_p99: float | None,
        request: _Request,
        ack: _AckContext,
    ) -> None:
        lifecycle = self.config.lifecycle
        thresholds = candidate.model.manifest.drift_thresholds
        grace = Grace(
            GraceGates(
                max_error_rate=lifecycle.max_error_rate,
                min_windows=lifecycle.min_windows,
                output_min_windows=lifecycle.output_min_windows,
                latency_p99_ratio=lifecycle.latency_p99_ratio,
                latency_floor_ms=lifecycle.latency_floor_ms,
                output_psi_alert=lifecycle.output_psi_alert or thresholds.psi_alert,
            ),
            candidate.baseline,
            previous_p99,
        )
        self._grace = grace
        self._grace_model = candidate.model
        self._grace_previous = previous
        self._grace_over.clear()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._grace_over.wait(), request.grace_s)
            failure = grace.finish()
        finally:
            self._grace = None
            self._grace_model = None
        if failure is not None and previous is not None:
            await self._revert(failure, request.cmd_id, request.command, grace)
            return
        self._grace_previous = None
        await self._off(partial(self.store.set_active, request.model, request.version))
        logger.info("Model %s@%s kept after its grace period", request.model, request.version)
        await ack("kept", details={"windows": grace.windows, "errors": grace.errors})

    async def _revert(
        self, reason: str, cmd_id: str, command: str, grace: Grace | None = None
    ) -> None:
        """Put the model that served before the swap back (its session is still loaded)."""
        previous = self._grace_previous
        candidate = self._serving
        assert previous is not None and candidate is not None
        self._grace_previous = None
        self._grace = None
        self._grace_model = None
        await self._swap(previous)
        self.health.count("lifecycle.rollbacks")
        if candidate.sha256 is not None:
            await self._off(
                partial(self.store.mark_refused, candidate.sha256, f"rolled_back: {reason}")
            )
        logger.warning(
            "Model %s@%s rolled back to %s: %s",
            candidate.name,
            candidate.version,
            previous.version,
            reason,
        )
        details: Details = {"serving": previous.version}
        if grace is not None:
            details |= {"windows": grace.windows, "errors": grace.errors}
        await self.ack(
            cmd_id, command, "rolled_back", True, reason, candidate.name, candidate.version,
            previous.version, details,
        )  # fmt: skip
        self._job_request = None

    # --------------------------------------------------------------------------- drift

    async def _drift_loop(self) -> None:
        while True:
            monitor = self._drift
            now = time.time()
            if monitor is None:
                await asyncio.sleep(1.0)
                continue
            if monitor.due(now):
                await self._publish_drift(monitor.summary(now))
                continue
            await asyncio.sleep(min(1.0, monitor.window_start + monitor.window_s - now))

    async def _publish_drift(self, report: DriftReport) -> None:
        records: Records = [
            (
                self.topics.drift,
                partial(
                    DriftSummaryPayload,
                    model=report.model,
                    model_version=report.model_version,
                    window_start=report.window_start,
                    window_end=report.window_end,
                    features=report.features,
                    outputs=report.outputs,
                    scores=report.scores,
                    levels=report.levels,
                ),
            )
        ]
        for name, found in sorted(report.levels.items()):
            if found == "ok":
                continue
            self.health.count(f"drift.{found}s")
            records.append(
                (
                    self.topics.alerts,
                    partial(
                        AlertPayload,
                        model=report.model,
                        model_version=report.model_version,
                        name=name,
                        level=found,
                        scores=report.scores.get(name, {}),
                        window_end=report.window_end,
                    ),
                )
            )
        self.health.count("drift.summaries")
        await self._send(records)

    # ------------------------------------------------------------------------------ helpers

    async def ack(  # noqa: PLR0917 - an ack names all of these, positionally at every call
        self,
        cmd_id: str,
        command: str,
        step: str,
        ok: bool,
        reason: str | None = None,
        model: str | None = None,
        version: str | None = None,
        previous_version: str | None = None,
        details: Details | None = None,
    ) -> None:
        """Store an ack in the outbox (it arrives at least once)."""
        self.health.count(f"lifecycle.acks.{step}")
        await self._send(
            [
                (
                    self.topics.ack,
                    partial(
                        AckPayload,
                        cmd_id=cmd_id,
                        command=command,
                        step=step,
                        ok=ok,
                        reason=reason,
                        model=model,
                        version=version,
                        previous_version=previous_version,
                        details=details or {},
                    ),
                )
            ]
        )

    async def _off(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)
