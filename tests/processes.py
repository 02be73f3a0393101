"""What tests that start real processes (gateways, web servers, workers, the soak) share: a free
port, and how a child process reaches the test database."""
import socket

from django.db import connection


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url():
    """The PostgreSQL test database as a DATABASE_URL."""
    db = connection.settings_dict
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def database_env():
    """The environment a child process needs to use the test database, on either backend."""
    if connection.vendor == "sqlite":
        return {"SQLITE_PATH": connection.settings_dict["NAME"]}
    return {"DATABASE_URL": database_url()}
