from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .helpers import WorkerProcess


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def shared_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """One worker on 0MQ for a module's tests that do not stop it."""
    with WorkerProcess(tmp_path_factory.mktemp("worker")) as worker:
        yield worker


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[type[WorkerProcess]]:
    started: list[WorkerProcess] = []

    class Factory(WorkerProcess):
        def __init__(self, **kwargs: object) -> None:
            super().__init__(tmp_path, **kwargs)  # type: ignore[arg-type]
            started.append(self)

    yield Factory
    for worker in started:
        if worker.proc is not None and worker.proc.poll() is None:
            worker.stop()


# -- RabbitMQ: tests marked ``amqp`` skip where none answers, and fail where one is required --


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("amqp") is None:
        return
    import os

    from .rabbitmq import REQUIRE_ENV, rabbitmq_absent

    why = rabbitmq_absent()
    if why is None:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{why}, and {REQUIRE_ENV}=1 requires one", pytrace=False)
    pytest.skip(f"{why}; set {REQUIRE_ENV}=1 to fail instead")


@pytest.fixture(scope="session", autouse=True)
def _delete_amqp_test_exchanges() -> Iterator[None]:
    """Exchanges made for the conformance suite's URLs, removed once the session ends."""
    yield
    from .rabbitmq import delete_exchanges

    delete_exchanges()


@pytest.fixture
def exchange() -> Iterator[str]:
    """An AMQP exchange name of the test's own, deleted after it."""
    from .rabbitmq import delete_exchanges, unique_exchange

    name = unique_exchange()
    yield name
    delete_exchanges(name)


@pytest.fixture
def publisher(shared_worker: WorkerProcess) -> Iterator[Any]:
    """A 0MQ publisher connected to the module's shared worker."""
    from brokers.zeromq import ZeroMQBroker

    broker = ZeroMQBroker(shared_worker.broker_url, connect_timeout=5)
    yield broker
    broker.close()


@pytest.fixture
def bus(shared_worker: WorkerProcess) -> Iterator[WorkerProcess]:
    """Model saves and ``signalbus.publish`` go to the shared worker through 0MQ."""
    from bridges.django_signals import set_broker
    from brokers.zeromq import ZeroMQBroker

    broker = ZeroMQBroker(shared_worker.broker_url, connect_timeout=5)
    previous = set_broker(broker)
    yield shared_worker
    set_broker(previous)
    broker.close()
