"""Dashboard pages of the factory app: sign-in, layout and role badge, factory status, audit log.

Each page is checked as a plain request, as an htmx request (which gets only its fragment), and
for a user whose role or factory does not allow it."""
import pytest
from django.urls import reverse

from factory.models import AuditEntry
from factory.services import audit_record

HX = {"HTTP_HX_REQUEST": "true"}


def hx(target="main"):
    """Headers of an htmx request aimed at the element with id `target`."""
    return {**HX, "HTTP_HX_TARGET": target}


def login(client, user):
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_login_page_signs_in_with_the_right_password_only(client, bob):
    page = client.get(reverse("login"))
    assert page.status_code == 200
    assert b'for="id_username"' in page.content and b'for="id_password"' in page.content

    wrong = client.post(reverse("login"), {"username": "bob", "password": "nope"})
    assert wrong.status_code == 200
    assert b"role=\"alert\"" in wrong.content
    assert "_auth_user_id" not in client.session

    right = client.post(reverse("login"), {"username": "bob", "password": "bob-pass-1"})
    assert right.status_code == 302
    assert client.session["_auth_user_id"] == str(bob.pk)


@pytest.mark.django_db
def test_pages_need_a_signed_in_user(client, factory):
    for name in ("factory-status", "audit-log", "device-list", "group-list", "wave-list", "devicelist-list"):
        response = client.get(reverse(name))
        assert response.status_code == 302 and response["Location"].startswith(reverse("login")), name


@pytest.mark.django_db
def test_header_shows_factory_role_and_navigation(client, carol):
    page = login(client, carol).get(reverse("audit-log"))
    html = page.content.decode()
    assert 'class="role-badge" data-role="qa"' in html
    assert "acme" in html
    assert 'aria-current="page"' in html and ">Audit log</a>" in html
    # navigation links work without JavaScript and with htmx
    assert f'href="{reverse("device-list")}" hx-get="{reverse("device-list")}"' in html


@pytest.mark.django_db
def test_user_without_factory_sees_an_explanation(client, django_user_model):
    lost = django_user_model.objects.create_user("lost", password="lost-pass-1")
    response = login(client, lost).get(reverse("home"))
    assert response.status_code == 403
    assert b"not a member of any factory" in response.content


@pytest.mark.django_db
def test_factory_switch_only_to_own_factories(client, alice, other_factory):
    from factory.models import Role
    from factory.services import user_create

    user_create(username="alice", factory=other_factory, role=Role.SUPPORT)
    login(client, alice)
    page = client.get(reverse("audit-log"))
    assert b'id="factory-switch"' in page.content
    client.post(reverse("factory-switch"), {"factory": other_factory.id})
    page = client.get(reverse("audit-log"))
    assert b'data-role="support"' in page.content


@pytest.mark.django_db
def test_factory_switch_refuses_a_foreign_factory(client, bob, other_factory):
    login(client, bob).post(reverse("factory-switch"), {"factory": other_factory.id})
    page = client.get(reverse("audit-log"))
    assert b'data-role="release-manager"' in page.content


@pytest.mark.django_db
def test_status_page_and_fragment(client, dave, factory):
    from devices.fleet import fleet_seed

    fleet_seed(factory=factory, tag="production", groups={"canary": 2}, ungrouped=1, test_devices=1, version=None)
    page = login(client, dave).get(reverse("factory-status"))
    assert page.status_code == 200
    html = page.content.decode()
    assert "<html" in html and "Tag <span" in html and "production" in html and "test" in html

    fragment = client.get(reverse("factory-status"), **hx("status-panel"))
    assert fragment.status_code == 200
    assert b"<html" not in fragment.content and b'id="status-panel"' in fragment.content
    assert b"<h1>" not in fragment.content

    navigation = client.get(reverse("factory-status"), **hx("main"))
    assert b"<html" not in navigation.content and b"<h1>Factory status</h1>" in navigation.content
    assert b"<title>Factory status" in navigation.content and b'hx-swap-oob="true"' in navigation.content


@pytest.mark.django_db
def test_status_threshold_is_validated_at_its_field(client, dave):
    page = login(client, dave).get(reverse("factory-status"), {"offline_threshold": "-3"})
    assert page.status_code == 200
    assert b'id="id_offline_threshold_error"' in page.content


@pytest.mark.django_db
def test_status_refuses_another_factorys_user(client, eve, factory):
    # eve's only factory is globex: she sees globex, never acme's devices
    from devices.fleet import fleet_seed

    fleet_seed(factory=factory, tag="acme-only-tag", ungrouped=1)
    page = login(client, eve).get(reverse("factory-status"))
    assert page.status_code == 200
    assert b"acme-only-tag" not in page.content


@pytest.mark.django_db
def test_audit_log_filters_and_pages(client, dave, bob, factory, other_factory):
    for i in range(60):
        audit_record(factory=factory, actor=bob, action="group.create", target=f"g{i:02d}")
    audit_record(factory=factory, actor=dave, action="wave.init", target="v1")
    audit_record(factory=other_factory, actor=None, action="wave.init", target="secret-wave")
    login(client, dave)

    page = client.get(reverse("audit-log"))
    assert page.status_code == 200
    html = page.content.decode()
    assert "secret-wave" not in html
    assert html.index(">v1<") < html.index(">g59<")  # newest first
    assert "g09" not in html  # 50 a page
    assert 'rel="next"' in html

    last = AuditEntry.objects.filter(factory=factory, target="g10").get()
    older = client.get(reverse("audit-log"), {"after": last.pk}, **hx("audit-results"))
    assert older.status_code == 200 and b"<html" not in older.content
    assert b">g09<" in older.content and b">g10<" not in older.content

    filtered = client.get(reverse("audit-log"), {"action": "wave.init"}, **hx("audit-results"))
    assert b">v1<" in filtered.content and b">g01<" not in filtered.content

    by_actor = client.get(reverse("audit-log"), {"actor": "dave"})
    assert b">v1<" in by_actor.content and b">g01<" not in by_actor.content


@pytest.mark.django_db
def test_audit_log_date_range_errors_show_at_the_field(client, dave):
    page = login(client, dave).get(reverse("audit-log"), {"since": "2026-05-02", "until": "2026-05-01"})
    assert page.status_code == 200
    assert b'id="id_until_error"' in page.content
    assert b"Fix the filters above" in page.content


@pytest.mark.django_db
def test_audit_log_of_another_factory_is_not_shown(client, eve, factory, bob):
    audit_record(factory=factory, actor=bob, action="wave.init", target="acme-wave")
    page = login(client, eve).get(reverse("audit-log"), **hx("audit-results"))
    assert page.status_code == 200
    assert b"acme-wave" not in page.content
