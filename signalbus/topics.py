"""Topics, patterns and the relation between them (DESIGN.md, "Topics and patterns").

A topic is dot-separated words; a pattern may also use ``*`` (one word) and
``#`` (zero or more words), with the AMQP topic-exchange semantics on every
broker. Compiled matchers and containment answers are cached, because the
same few patterns are checked against every event and every request.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import lru_cache

from .errors import InvalidTopic

__all__ = [
    "MAX_TOPIC_BYTES",
    "compile_pattern",
    "matches",
    "pattern_within",
    "pk_word",
    "validate_pattern",
    "validate_topic",
]

MAX_TOPIC_BYTES = 255
_WORD_CHARS = r"[A-Za-z0-9_\-~%:]+"
_WORD = re.compile(_WORD_CHARS)
_TOPIC = re.compile(rf"{_WORD_CHARS}(?:\.{_WORD_CHARS})*")  # all ASCII: len is bytes
_PK_SAFE = re.compile(r"[A-Za-z0-9_\-~:]+")
_PK_SAFE_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-~:")


def _split(text: object, what: str, *, wildcards: bool) -> list[str]:
    if not isinstance(text, str):
        raise InvalidTopic(f"a {what} must be a string, not {type(text).__name__}")
    if not text:
        raise InvalidTopic(f"empty {what}")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_TOPIC_BYTES:
        raise InvalidTopic(f"{what} is {size} bytes long; the limit is {MAX_TOPIC_BYTES}")
    words = text.split(".")
    for position, word in enumerate(words, 1):
        if wildcards and word in ("*", "#"):
            continue
        if not _WORD.fullmatch(word):
            shown = repr(word) if word else "an empty word"
            allowed = "A-Z a-z 0-9 _ - ~ % :" + (" or a lone * or #" if wildcards else "")
            raise InvalidTopic(
                f"bad {what} {text!r}: word {position} is {shown}; "
                f"words are one or more of {allowed}"
            )
    return words


def validate_topic(topic: str) -> str:
    """Return ``topic`` unchanged, or raise `InvalidTopic` saying what is wrong with it."""
    if type(topic) is str and len(topic) <= MAX_TOPIC_BYTES and _TOPIC.fullmatch(topic):
        return topic  # one match for the common case; _split says what is wrong otherwise
    _split(topic, "topic", wildcards=False)
    return topic


def validate_pattern(pattern: str) -> str:
    """Return ``pattern`` unchanged, or raise `InvalidTopic` saying what is wrong with it."""
    _split(pattern, "pattern", wildcards=True)
    return pattern


def pk_word(pk: object) -> str:
    """One topic word for a primary key: UTF-8 bytes outside ``A-Z a-z 0-9 _ - ~ :`` become
    ``%XX``, so that no two keys share a word (``acme.corp`` -> ``acme%2Ecorp``)."""
    if type(pk) is int:
        return str(pk)  # digits and "-": the common key needs no check
    text = str(pk)
    if _PK_SAFE.fullmatch(text):
        return text
    if not text:
        raise InvalidTopic("an empty primary key has no topic word")
    return "".join(
        chr(byte) if byte in _PK_SAFE_BYTES else f"%{byte:02X}" for byte in text.encode("utf-8")
    )


Matcher = Callable[[str], bool]


@lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> Matcher:
    """A function telling whether a topic matches ``pattern``."""
    words = _collapse(_split(pattern, "pattern", wildcards=True))
    if "#" not in words and "*" not in words:
        return pattern.__eq__
    if words.count("#") <= 1:
        # One '#' at most: the regular expression cannot backtrack more than once
        # per word, so the C engine is both exact and fast.
        return _regex_matcher(words)
    return _nfa_matcher(tuple(words))


def matches(pattern: str, topic: str) -> bool:
    """Whether ``topic`` matches ``pattern`` (AMQP topic-exchange rules)."""
    return compile_pattern(pattern)(topic)


def _collapse(words: list[str]) -> list[str]:
    """``#.#`` matches what ``#`` matches: fold runs of ``#`` into one."""
    out: list[str] = []
    for word in words:
        if not (word == "#" and out and out[-1] == "#"):
            out.append(word)
    return out


def _regex_matcher(words: list[str]) -> Matcher:
    parts = []
    for word in words:
        if word == "*":
            parts.append(r"\.[^.]+")
        elif word == "#":
            parts.append(r"(?:\.[^.]+)*")
        else:
            parts.append(r"\." + re.escape(word))
    fullmatch = re.compile("".join(parts)).fullmatch
    return lambda topic: fullmatch("." + topic) is not None


def _closure(words: tuple[str, ...], states: Iterable[int]) -> frozenset[int]:
    """The positions reachable without consuming a word (a ``#`` may match nothing)."""
    out: set[int] = set()
    for state in states:
        while True:
            out.add(state)
            if state < len(words) and words[state] == "#":
                state += 1
            else:
                break
    return frozenset(out)


def _step(words: tuple[str, ...], states: frozenset[int], word: str) -> frozenset[int]:
    nxt: list[int] = []
    for state in states:
        if state == len(words):
            continue
        expected = words[state]
        if expected == "#":
            nxt.append(state)
        elif expected == "*" or expected == word:
            nxt.append(state + 1)
    return _closure(words, nxt)


def _nfa_matcher(words: tuple[str, ...]) -> Matcher:
    start = _closure(words, (0,))
    accept = len(words)

    def match(topic: str) -> bool:
        states = start
        for word in topic.split("."):
            states = _step(words, states, word)
            if not states:
                return False
        return accept in states

    return match


@lru_cache(maxsize=4096)
def pattern_within(inner: str, outer: str) -> bool:
    """Whether every topic ``inner`` matches is also matched by ``outer``.

    Decided exactly on the two patterns' automata: a word that neither pattern
    names behaves like any other such word, so the literals of both plus one
    fresh word are all the alphabet needed (``shop.#`` is not within ``shop.order.*``).
    """
    a = tuple(_collapse(_split(inner, "pattern", wildcards=True)))
    b = tuple(_collapse(_split(outer, "pattern", wildcards=True)))
    fresh = "\x00"  # never a word of a valid pattern
    alphabet = {w for w in a + b if w not in ("*", "#")} | {fresh}
    start_a, start_b = _closure(a, (0,)), _closure(b, (0,))
    # A topic has one word at least, so the search starts after the first word.
    todo = [(_step(a, start_a, w), _step(b, start_b, w)) for w in alphabet]
    todo = [pair for pair in todo if pair[0]]
    seen = set(todo)
    while todo:
        states_a, states_b = todo.pop()
        if len(a) in states_a and len(b) not in states_b:
            return False
        for word in alphabet:
            pair = (_step(a, states_a, word), _step(b, states_b, word))
            if pair[0] and pair not in seen:
                seen.add(pair)
                todo.append(pair)
    return True
