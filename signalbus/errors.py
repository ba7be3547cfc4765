"""signalbus's exceptions, one tree so that callers can catch what they can act on.

    SignalbusError
    ├── ConfigurationError       settings or a URL are wrong; retrying cannot help
    │   └── UnknownBroker        no adapter registered for the URL's scheme
    ├── BrokerError              the transport failed
    │   ├── BrokerUnavailable    cannot reach the broker (now); a retry may help
    │   └── PublishError         one event could not be handed to the broker
    ├── InvalidTopic (ValueError)  a topic or pattern breaks the grammar
    ├── InvalidEvent (ValueError)  an event breaks the CloudEvents contract
    └── InvalidToken (ValueError)  a subscription token is forged, malformed or expired
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "BrokerUnavailable",
    "ConfigurationError",
    "InvalidEvent",
    "InvalidToken",
    "InvalidTopic",
    "PublishError",
    "SignalbusError",
    "UnknownBroker",
]


class SignalbusError(Exception):
    """The root of every error signalbus raises on purpose."""


class ConfigurationError(SignalbusError):
    """The project's configuration is wrong; fix it, a retry will not help."""


class UnknownBroker(ConfigurationError):
    """No broker adapter is registered for a URL scheme."""


class BrokerError(SignalbusError):
    """The transport failed."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached now; a later retry may succeed."""


class PublishError(BrokerError):
    """An event could not be handed to the broker."""


class InvalidTopic(SignalbusError, ValueError):
    """A topic or a pattern does not follow the grammar of DESIGN.md."""


class InvalidEvent(SignalbusError, ValueError):
    """An event (or a message claiming to be one) breaks the CloudEvents contract."""


class InvalidToken(SignalbusError, ValueError):
    """A subscription token has a bad signature, a malformed payload, or has expired."""
