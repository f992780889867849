"""router_config's labels for the router: maintenance mode and the access log's version.

Pure: desired + live instances + split in, RouterConfig out (the controller's
side of the router, rollout/strategies.py).
"""

from __future__ import annotations

from typing import Any

from ondeck.rollout.strategies import EnvTraffic, router_config
from ondeck.spec.model import MAINTENANCE_MESSAGE, Service
from ondeck.state.desired import Desired, DesiredService
from ondeck.state.live import LiveInstance, Phase
from ondeck.state.rollout import Traffic


def desired(**fields: Any) -> Desired:
    spec = Service.model_validate(
        {"command": ["app"], "version": "2.0", "routes": [{"path": "/"}], **fields}
    )
    return Desired("shop", "prod", "rev", "process", (DesiredService("web", spec, "new"),))


def instance(id: str, fingerprint: str) -> LiveInstance:
    return LiveInstance(id, "web", fingerprint, "rev", Phase.RUNNING, ready=True, port=40001)


LIVE = (instance("w1", "old"), instance("w2", "new"))
CANARY = {"web": Traffic("old", "new", 10)}


def test_maintenance_is_carried_with_the_backends_kept() -> None:
    config = router_config(
        [EnvTraffic(desired(maintenance={"message": "<b>soon</b>"}), LIVE, {})], 1
    )
    pool = config.pools["prod/web"]
    assert pool.maintenance == "<b>soon</b>"  # escaped by the router when it answers
    assert [b.id for b in pool.stable] == ["w1", "w2"]


def test_maintenance_without_a_message_gets_the_default_and_none_serves() -> None:
    with_default = router_config([EnvTraffic(desired(maintenance={}), LIVE, {})], 1)
    assert with_default.pools["prod/web"].maintenance == MAINTENANCE_MESSAGE
    serving = router_config([EnvTraffic(desired(), LIVE, {})], 1)
    assert serving.pools["prod/web"].maintenance is None


def test_backends_carry_the_version_of_the_desired_release_only() -> None:
    pool = router_config([EnvTraffic(desired(), LIVE, CANARY)], 1).pools["prod/web"]
    (old,), (new,) = pool.stable, pool.canary
    assert (old.id, old.version, old.release) == ("w1", "", "old")  # an older release
    assert (new.id, new.version, new.release) == ("w2", "2.0", "new")
