"""The test project's AUTHORIZE: each user reads ``user.<own id>.#``; users with
``auth.view_user`` read ``auth.user.#``; active staff read ``staff.#``."""

from signalbus import permissions

can_subscribe = permissions.any_of(
    permissions.own_topics(),
    permissions.has_model_perm("auth.User"),
    permissions.is_staff("staff.#"),
)
