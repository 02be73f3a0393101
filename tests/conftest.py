"""Shared fixtures: a factory with one user per role (alice admin, bob release manager,
carol QA, dave support) and eve, who belongs to another factory."""
import uuid

import pytest
from django.db import connection

from factory.models import Role
from factory.services import user_create
from factory.tuf.services.repository import factory_create


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "postgres" in item.keywords and connection.vendor != "postgresql":
            item.add_marker(pytest.mark.skip(reason="needs PostgreSQL (set DATABASE_URL); CI runs it"))


@pytest.fixture(autouse=True)
def fresh_failure_limits(monkeypatch):
    """Failed logins are counted in the shared cache; each test starts with none counted."""
    monkeypatch.setattr("factory.ratelimit.NAMESPACE", f"ratelimit-test-{uuid.uuid4().hex}")


@pytest.fixture
def factory(db):
    return factory_create(name="acme")


@pytest.fixture
def other_factory(db):
    return factory_create(name="globex")


@pytest.fixture
def alice(factory):
    return user_create(username="alice", factory=factory, role=Role.ADMIN, password="alice-pass-1")


@pytest.fixture
def bob(factory):
    return user_create(username="bob", factory=factory, role=Role.RELEASE_MANAGER, password="bob-pass-1")


@pytest.fixture
def carol(factory):
    return user_create(username="carol", factory=factory, role=Role.QA, password="carol-pass-1")


@pytest.fixture
def dave(factory):
    return user_create(username="dave", factory=factory, role=Role.SUPPORT, password="dave-pass-1")


@pytest.fixture
def eve(other_factory):
    return user_create(username="eve", factory=other_factory, role=Role.ADMIN, password="eve-pass-1")
