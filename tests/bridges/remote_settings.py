"""The test project with the subscribers of `tests.bridges.remote_subscribers`, for workers
started as processes by `tests.bridges.test_remote`."""

from tests.project.settings import *  # noqa: F403
from tests.project.settings import SIGNALBUS as _BASE

SIGNALBUS = {
    **_BASE,
    "PUBLIC_TOPICS": ["#"],
    "SUBSCRIBERS": ["tests.bridges.remote_subscribers"],
    "SUBSCRIBER_THREADS": 2,
}
