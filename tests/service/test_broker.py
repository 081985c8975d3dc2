"""The service's node broker without processes: replies bound to their task, site and kind."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from federation.query.central.audit import Head
from federation.query.policy import ConsortiumDisclosurePolicy
from federation.query.site.partial import SiteTask
from federation.query.site.summaries import RowCount
from federation.service.broker import NodeBroker
from federation.signing import load_or_create_signer


def test_replies_of_the_wrong_kind_or_site_are_not_accepted(tmp_path: Path) -> None:
    broker = NodeBroker(load_or_create_signer(tmp_path / "k"), lambda: Head(id=0, hash="0" * 64),
                        lambda: ["site-a", "site-b"], reply_timeout=5, pickup_timeout=2)
    task = SiteTask(study_id="PONC-WT-01", thresholds=ConsortiumDisclosurePolicy(), requests=[RowCount()])
    out: dict[str, object] = {}

    def node() -> None:
        while not (taken := broker.poll("site-a", 1.0)):
            pass
        task_id, _ = taken[0]
        assert not broker.deliver("site-b", task_id, [])  # another site's node cannot answer it
        assert broker.deliver("site-a", task_id, [Head(id=1, hash="a" * 64)])  # heads, for a summaries task

    t = threading.Thread(target=node)
    t.start()
    for _ in range(50):  # the node polls before the service asks
        if broker.connected("site-a"):
            break
        time.sleep(0.05)
    out.update(broker.ask({"site-a": task, "site-b": task}))
    t.join()
    assert out["site-a"] == "the node of site-a sent a reply of the wrong kind"
    assert out["site-b"] == "the node of site-b is not connected"
