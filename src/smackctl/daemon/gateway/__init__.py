"""The one way through the supervisor for a request: the API route hands it to ``Gateway``,
which resolves ``model: auto`` (``auto.Router``), plans the attempts as a pure function of
the profile and a snapshot of the deployments (``plan``), and sends each attempt down to a
deployment (``deployments``): a local model (``local``: the response cache in front of it,
then its runner through ``relay``) or a server elsewhere (``remote``). Nothing below calls
back up. The answer's headers are set here and only here; usage is counted by whoever
answered (``usage.Usage``).

    api ─▶ Gateway.handle ─▶ Router.decide (auto)   ─▶ plan.chain / plan.attempts (pure)
                          └▶ Deployments.send ─▶ LocalModels.send ─▶ Cached ─▶ Runners.forward
                                              └▶ Remote.send (retries, breaker)

A plain local model (a chain of one) goes straight to ``LocalModels.send``: no breaker, no
skip rule stands between a model and its only deployment. A fallback or retry happens only
before the first byte reaches the client; after it, an error event ends the stream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.responses import Response

from smackctl.config import Profile
from smackctl.daemon.events import Events
from smackctl.daemon.registry import Registry
from smackctl.errors import NoDeployment

from . import plan
from .auto import Router
from .call import KEEP, Call
from .deployments import Deployments
from .local import LocalModels
from .remote import Failed

__all__ = ["KEEP", "Call", "Gateway"]

log = logging.getLogger("smackctl.gateway")


class Gateway:
    def __init__(
        self,
        profile: Callable[[], Profile],
        registry: Registry,
        deployments: Deployments,
        local: LocalModels,
        router: Router,
        events: Events,
    ) -> None:
        self.profile, self.registry, self.deployments = profile, registry, deployments
        self.local, self.router, self.events = local, router, events
        self._turns: dict[str, int] = {}  # round-robin groups: requests so far

    async def handle(self, call: Call) -> Response:
        """The answer to ``call``, its headers set: who answered, after which failures, by
        which ``model: auto`` decision."""
        name = call.model or self.profile().routing.default_model
        if name == "auto":
            decision = await self.router.decide(call.path, call.body)
            log.info("%s: model auto -> %s (%s)", call.request_id, decision.model, decision.reason)
            call, name = call.to(decision.model, decision.header()), decision.model
        names = self._chain(name)
        spec = self.profile().models.get(names[0])
        failed: list[str] = []
        if len(names) == 1 and (spec is None or not spec.remote):  # a plain local model
            answer, via = await self.local.send(names[0], call), names[0]
        else:
            answer, via, failed = await self._attempts(name or "", names, call)
        answer.headers["X-Request-Id"] = call.request_id
        answer.headers["X-Smackctl-Deployment"] = via
        if failed:
            answer.headers["X-Smackctl-Fallback-From"] = ",".join(failed)
        if call.route is not None:
            answer.headers["X-Smackctl-Route"] = call.route
        return answer

    def _chain(self, name: str | None) -> list[str]:
        """The deployments to try for ``name``; an unknown one is ModelNotFound."""
        profile = self.profile()
        self.deployments.sync()
        target = plan.target(profile, name) if name else None
        if target is None:
            return [self.registry.resolve(name).name]  # an added model, or none is known
        group = profile.groups.get(target)
        deployed = self.deployments.snapshot(list(group.deployments)) if group else {}
        names = plan.chain(profile, target, deployed, self._turns)
        if group is not None and group.policy == "round-robin":
            self._turns[target] = self._turns.get(target, 0) + 1
        return names

    async def _attempts(
        self, asked: str, names: list[str], call: Call
    ) -> tuple[Response, str, list[str]]:
        """The first answer along the chain: (it, who gave it, who failed before)."""
        errors: list[str] = []  # "NAME: why" of each deployment skipped or failed so far
        statuses: list[int] = []  # of each deployment that failed
        probes: list[float] = []  # seconds until each open breaker's probe
        deployed = self.deployments.snapshot(names)
        for attempt in plan.attempts(names, deployed, call.path, plan.estimated_tokens(call.body)):
            d = self.deployments.get(attempt.name)
            skip = attempt.skip
            if skip is None and not d.breaker.allows():
                probes.append(d.breaker.retry_in())
                skip = (
                    f"its circuit breaker is {d.breaker.state} ({d.breaker.why}); "
                    f"a probe in {probes[-1]:.1f}s"
                )
            if skip is not None:
                errors.append(f"{d.name}: {skip}")
                continue
            try:
                answer = await self.deployments.send(d, call)
            except Failed as exc:
                errors.append(f"{d.name}: {exc.why}")
                statuses.append(exc.status)
                log.warning(
                    "%s: %s failed before its answer began (%s)", call.request_id, d.name, exc.why
                )
                continue
            failed = [e.split(":", 1)[0] for e in errors]
            if failed:  # another deployment was skipped or failed first
                d.fallbacks_to += 1
                self.events.publish({"event": "fallback", "deployment": d.name})
                log.info("%s: answered by %s after %s", call.request_id, d.name, "; ".join(errors))
            return answer, d.name, failed
        raise self._none_answered(asked, errors, statuses, probes)

    @staticmethod
    def _none_answered(
        asked: str, errors: list[str], statuses: list[int], probes: list[float]
    ) -> NoDeployment:
        failed = NoDeployment(
            f"no deployment of {asked} could answer: " + "; ".join(errors),
            "see `smackctl backends` for each deployment's state; none answered, so the "
            "request is safe to send again",
        )
        failed.status = plan.final_status(statuses)
        if probes and not statuses:  # every one skipped, an open breaker among them: ask
            failed.retry_after = max(1.0, min(probes))  # again at the first probe, not at once
        return failed

    async def aclose(self) -> None:
        await self.deployments.aclose()
        await self.local.runners.aclose()
        self.local.cached.close()
