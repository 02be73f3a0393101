"""Roles are checked on the server: the same rule whichever door is used."""
import pytest

from factory.auth import PERMISSIONS, authorize, can
from factory.errors import Forbidden
from factory.models import Role

EXPECTED = {
    "alice": set(PERMISSIONS),
    "bob": set(PERMISSIONS) - {"factory.admin", "deadletters.view"},
    "carol": {"view", "rollout.preview", "devicelist.edit"},
    "dave": {"view", "deadletters.view"},
    "eve": set(),  # admin of another factory: nothing here
}


@pytest.mark.parametrize("username", list(EXPECTED))
def test_each_role_may_take_exactly_its_actions(request, factory, username):
    user = request.getfixturevalue(username)
    allowed = {action for action in PERMISSIONS if can(user, factory, action)}
    assert allowed == EXPECTED[username]
    for action in set(PERMISSIONS) - allowed:
        with pytest.raises(Forbidden):
            authorize(user=user, factory=factory, action=action)


def test_every_role_is_known():
    assert {role for roles in PERMISSIONS.values() for role in roles} == set(Role)


def test_anonymous_may_do_nothing(factory):
    from django.contrib.auth.models import AnonymousUser

    assert not any(can(AnonymousUser(), factory, action) for action in PERMISSIONS)


def test_tokens_are_hashed_at_rest_scoped_and_revocable(factory, other_factory, bob, eve):
    from factory.models import ApiToken
    from factory.services import api_token_authenticate, api_token_create, api_token_revoke

    token, plain = api_token_create(user=bob, factory=factory, name="ci")
    assert plain not in ApiToken.objects.values_list("token_hash", flat=True)
    assert all(plain not in str(v) for v in ApiToken.objects.values_list())
    found = api_token_authenticate(plain)
    assert found.user == bob and found.factory == factory
    assert api_token_authenticate(plain[:-1] + ("A" if plain[-1] != "A" else "B")) is None
    assert api_token_authenticate("") is None and api_token_authenticate("Token xyz") is None
    with pytest.raises(Exception):
        api_token_create(user=eve, factory=factory)  # not a member of this factory
    api_token_revoke(token=token, actor=bob)
    assert api_token_authenticate(plain) is None


def test_passwords_are_hashed_with_argon2_and_older_hashes_upgrade_at_sign_in(db, client, settings):
    """Sign-in costs one Argon2id verification (memory-hard, under the 300 ms goal); a user
    whose password was stored with PBKDF2 still signs in, and is rehashed with Argon2."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password

    settings.PASSWORD_HASHERS = list(settings.PASSWORD_HASHERS)
    assert settings.PASSWORD_HASHERS[0].endswith("Argon2PasswordHasher")
    user = get_user_model().objects.create(username="olde", password=make_password("olde-pass-1", hasher="pbkdf2_sha256"))
    assert user.password.startswith("pbkdf2_sha256$")
    response = client.post("/login/", {"username": "olde", "password": "olde-pass-1"})
    assert response.status_code == 302
    user.refresh_from_db()
    assert user.password.startswith("argon2$argon2id$")
