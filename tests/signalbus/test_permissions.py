"""The ready AUTHORIZE rules, on real Django users and permissions."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from signalbus import permissions

pytestmark = pytest.mark.django_db


def user(name: str, **fields: Any) -> Any:
    return get_user_model().objects.create_user(name, **fields)


def test_own_topics_grants_only_what_lies_inside_the_users_own_prefix():
    rule = permissions.own_topics()
    ada = user("ada")
    mine = f"user.{ada.pk}"
    for pattern in (f"{mine}.#", f"{mine}.inbox", f"{mine}.*", f"{mine}.*.read"):
        assert rule(ada, pattern), pattern
    for pattern in ("#", "user.#", "user.*.inbox", f"{mine}0.#", f"user.{ada.pk + 1}.#"):
        assert not rule(ada, pattern), pattern


def test_own_topics_with_another_prefix():
    ada = user("ada")
    rule = permissions.own_topics("tenant.members")
    assert rule(ada, f"tenant.members.{ada.pk}.x")
    assert not rule(ada, f"user.{ada.pk}.x")


def test_is_staff_needs_an_active_staff_user_and_a_pattern_inside_its_grant():
    rule = permissions.is_staff("ops.#")
    staff = user("sam", is_staff=True)
    assert rule(staff, "ops.#")
    assert rule(staff, "ops.deploy.*")
    assert not rule(staff, "#")
    assert not rule(staff, "opsx.y")
    assert not rule(user("una"), "ops.#")
    assert not rule(user("ina", is_staff=True, is_active=False), "ops.#")


def test_has_model_perm_follows_django_permissions():
    rule = permissions.has_model_perm("auth.User")
    viewer, other = user("vic"), user("ola")
    viewer.user_permissions.add(Permission.objects.get(codename="view_user"))
    viewer = get_user_model().objects.get(pk=viewer.pk)  # a fresh permission cache
    assert rule(viewer, "auth.user.#")
    assert rule(viewer, "auth.user.*.updated")
    assert not rule(viewer, "auth.#")
    assert not rule(viewer, "auth.group.#")
    assert not rule(other, "auth.user.#")
    assert permissions.has_model_perm("auth.User", "change")(viewer, "auth.user.#") is False
    superuser = get_user_model().objects.create_superuser("root")
    assert rule(superuser, "auth.user.1.updated")


def test_any_of_allows_what_one_rule_allows_and_nothing_more():
    rule = permissions.any_of(permissions.own_topics(), permissions.is_staff("ops.#"))
    staff = user("sam", is_staff=True)
    assert rule(staff, f"user.{staff.pk}.#")
    assert rule(staff, "ops.x")
    assert not rule(staff, "user.#")
    assert not rule(user("una"), "ops.x")


@pytest.mark.parametrize("model", ["User", "auth.", ".User", "auth.models.User", ""])
def test_a_model_label_that_is_not_app_label_dot_model_is_an_error(model: str):
    with pytest.raises(ValueError, match=r"app_label\.ModelName"):
        permissions.has_model_perm(model)
