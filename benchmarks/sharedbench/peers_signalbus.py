"""The signalbus targets added to the peer harness's ``peers.py`` (paste below its
``Signalbus`` class and add the ``Signalbus*`` classes to ``PEERS``; copy
``signalbus_direct_pub.py`` to its ``apps/``). ``signalbus`` and ``signalbus-amqp`` are
the harness's own."""

# ruff: noqa: F821 (names of the harness's peers.py: Signalbus, HOST, PY, APPS, os, signalbus_cli)


class SignalbusDirect(Signalbus):
    """The signalbus worker fed by signalbus's own 0MQ publisher from a bare asyncio
    endpoint (apps/signalbus_direct_pub.py), no Django request per event: the
    worker's fan-out, published the way Nchan's POST /pub is."""

    name = "signalbus-direct"
    sub_addr = (HOST, 18095)
    pub_addr = (HOST, 18096)
    pub_path = "/publish"
    broker_url = f"zmq://{HOST}:18097"

    def commands(self):
        env = self.env()
        self.migrate(env)
        worker = [*signalbus_cli(), "worker", "--settings", "benchproj.settings",
                  "--host", HOST, "--port", str(self.sub_addr[1])]
        pub = [PY, os.path.join(APPS, "signalbus_direct_pub.py"), str(self.pub_addr[1]),
               self.broker_url]
        return [(worker, env), (pub, env)]


class TwoWorkers:
    """A target's worker run with ``signalbus worker --workers 2``."""

    def commands(self):
        (worker, env), pub = super().commands()
        return [([*worker, "--workers", "2"], env), pub]


class SignalbusDirect2(TwoWorkers, SignalbusDirect):
    """``signalbus-direct`` with ``signalbus worker --workers 2``."""

    name = "signalbus-direct-w2"
    sub_addr = (HOST, 18098)
    pub_addr = (HOST, 18099)
    broker_url = f"zmq://{HOST}:18100"


class SignalbusDirectOther(SignalbusDirect):
    """``signalbus-direct`` running another checkout of signalbus, the one at
    ``$SIGNALBUS_OTHER_SRC``, first on the path: a change and the code before it measured
    side by side in one invocation."""

    name = "signalbus-direct-other"
    sub_addr = (HOST, 18101)
    pub_addr = (HOST, 18102)
    broker_url = f"zmq://{HOST}:18103"

    def env(self):
        env = super().env()
        env["PYTHONPATH"] = os.pathsep.join([os.environ["SIGNALBUS_OTHER_SRC"], env["PYTHONPATH"]])
        return env


class SignalbusDirectOther2(TwoWorkers, SignalbusDirectOther):
    """``signalbus-direct-other`` with ``signalbus worker --workers 2``: a change to the
    scale-out path and the code before it, side by side."""

    name = "signalbus-direct-other-w2"
    sub_addr = (HOST, 18104)
    pub_addr = (HOST, 18105)
    broker_url = f"zmq://{HOST}:18106"
