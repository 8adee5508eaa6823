"""The composition root wires each backend's joint writes: on PostgreSQL (spool and event store in
one database) a message and its ``accepted`` events, and a result and its events, commit in one
transaction and the workers read message bytes from PostgreSQL; on SQLite both go through
spool.db's event outbox and the workers read spool.db. The gateway tells them apart without
importing the PostgreSQL stores itself (they load psycopg; pipeline/app/gateway.py ``_one_postgres``).

Real SQLite files and a real private PostgreSQL cluster (``backend`` fixture).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.app.gateway import Gateway
from pipeline.config import load_config
from pipeline.delivery.results import JointAccepts, JointResults, OutboxAccepts, OutboxResults


def test_each_backend_gets_its_joint_writes_and_the_workers_read_its_spool(tmp_path: Path, backend: Any) -> None:
    config_file = tmp_path / "smtpgate.toml"
    text = f'[gateway]\ndata_dir = "{tmp_path / "data"}"\n'
    if backend.url:
        text += f'[storage]\nurl = "{backend.url}"\n'
    config_file.write_text(text)
    gateway = Gateway(load_config(str(config_file)))
    try:
        source = gateway.spool_source()
        assert source is not None
        if backend.url:
            assert isinstance(gateway.joint_results(), JointResults)
            assert isinstance(gateway.joint_accepts(), JointAccepts)
            assert (source.kind, source.where) == ("postgres", backend.url)
        else:
            assert isinstance(gateway.joint_results(), OutboxResults)
            assert isinstance(gateway.joint_accepts(), OutboxAccepts)
            assert (source.kind, source.where) == ("sqlite", str(tmp_path / "data" / "spool.db"))
    finally:
        gateway.spool.close()
        gateway.events.close()
