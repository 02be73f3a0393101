"""The database settings the environment gives (factory/project/settings.py): PostgreSQL as it is,
behind PgBouncer in transaction mode, and with a read replica. Each case imports the settings in
a fresh process, as a server started with that environment would."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
READ = "import json; from django.conf import settings; print(json.dumps({'databases': settings.DATABASES, 'routers': settings.DATABASE_ROUTERS}))"
OWN = ("DATABASE_URL", "DATABASE_REPLICA_URL", "DATABASE_CONN_MAX_AGE", "BREAKWATER_PGBOUNCER")


def settings_with(tmp_path, **environ):
    env = {k: v for k, v in os.environ.items() if k not in OWN}
    env.update(DJANGO_SETTINGS_MODULE="factory.project.settings", PYTHONPATH=str(ROOT), BREAKWATER_VAR_DIR=str(tmp_path), **environ)
    done = subprocess.run([sys.executable, "-c", READ], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_postgresql_keeps_persistent_connections_and_server_side_cursors(tmp_path):
    found = settings_with(tmp_path, DATABASE_URL="postgres://breakwater@db:5432/breakwater")
    (alias,) = found["databases"]
    default = found["databases"]["default"]
    assert alias == "default" and found["routers"] == []
    assert (default["HOST"], default["PORT"], default["NAME"]) == ("db", 5432, "breakwater")
    assert default["CONN_MAX_AGE"] == 60 and default["CONN_HEALTH_CHECKS"] is True
    assert default["DISABLE_SERVER_SIDE_CURSORS"] is False


def test_behind_pgbouncer_no_session_state_outlives_a_transaction(tmp_path):
    found = settings_with(tmp_path, DATABASE_URL="postgres://breakwater@pgbouncer:6432/breakwater", BREAKWATER_PGBOUNCER="1", DATABASE_CONN_MAX_AGE="0")
    default = found["databases"]["default"]
    assert default["PORT"] == 6432
    assert default["DISABLE_SERVER_SIDE_CURSORS"] is True
    assert default["OPTIONS"]["prepare_threshold"] is None
    assert default["CONN_MAX_AGE"] == 0


def test_a_replica_url_adds_the_replica_and_its_router(tmp_path):
    found = settings_with(
        tmp_path,
        DATABASE_URL="postgres://breakwater@pgbouncer:6432/breakwater",
        DATABASE_REPLICA_URL="postgres://breakwater@pgbouncer:6432/breakwater-replica?application_name=web",
        BREAKWATER_PGBOUNCER="1",
    )
    replica = found["databases"]["replica"]
    assert found["routers"] == ["factory.replica.ReplicaRouter"]
    assert (replica["NAME"], replica["OPTIONS"]["application_name"]) == ("breakwater-replica", "web")
    # Behind the same PgBouncer, with the same limits; tests read the primary's test database.
    assert replica["DISABLE_SERVER_SIDE_CURSORS"] is True and replica["OPTIONS"]["prepare_threshold"] is None
    assert replica["TEST"] == {"MIRROR": "default"}
