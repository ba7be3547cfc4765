"""Topics, patterns, pk words and containment (DESIGN.md, "Topics and patterns").

Matching and containment are checked against brute-force references written
here from the AMQP definition, on a tiny alphabet so that collisions happen.
"""

from __future__ import annotations

import itertools
import re
import urllib.parse
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signalbus import InvalidTopic, SignalbusError
from signalbus.topics import (
    MAX_TOPIC_BYTES,
    compile_pattern,
    matches,
    pattern_within,
    pk_word,
    validate_pattern,
    validate_topic,
)

WORD = re.compile(r"[A-Za-z0-9_\-~%:]+")
FRESH = "fresh"  # a valid word that no generated pattern names
# Same examples on every run: a red CI is reproducible, a green one is not luck.
PROPERTY = settings(max_examples=300, deadline=None, derandomize=True)

# -- grammar ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        "a",
        "shop.order.42.updated",
        "AZaz09_-~%:.x",
        "acme%2Ecorp",
        "billing.invoice.7.paid",
        ".".join(["w"] * 128),  # 255 bytes exactly
        "x" * MAX_TOPIC_BYTES,
    ],
)
def test_valid_topic_is_returned_unchanged(topic: str) -> None:
    assert validate_topic(topic) == topic
    assert validate_pattern(topic) == topic


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("", "empty topic"),
        ("a..b", "word 2 is an empty word"),
        (".a", "word 1 is an empty word"),
        ("a.", "word 2 is an empty word"),
        ("a b", "word 1 is 'a b'"),
        ("shop/order", "word 1 is 'shop/order'"),
        ("shop.ordér", "word 2 is 'ordér'"),
        ("a.*", "word 2 is '*'"),
        ("#", "word 1 is '#'"),
        ("a\nb", "word 1 is 'a\\nb'"),
    ],
)
def test_invalid_topic_is_rejected_with_the_reason(topic: str, reason: str) -> None:
    with pytest.raises(InvalidTopic, match=re.escape(reason)):
        validate_topic(topic)


def test_topic_message_lists_the_allowed_characters() -> None:
    with pytest.raises(InvalidTopic) as info:
        validate_topic("a.b!c")
    assert "A-Z a-z 0-9 _ - ~ % :" in str(info.value)
    assert "* or #" not in str(info.value)


@pytest.mark.parametrize("value", [None, 42, b"shop.order"])
def test_non_string_topic_is_rejected_naming_its_type(value: object) -> None:
    with pytest.raises(InvalidTopic, match=type(value).__name__):
        validate_topic(value)  # type: ignore[arg-type]


def test_topic_of_256_bytes_is_rejected_saying_the_limit() -> None:
    with pytest.raises(InvalidTopic, match=r"256 bytes long; the limit is 255"):
        validate_topic("x" * (MAX_TOPIC_BYTES + 1))
    with pytest.raises(InvalidTopic, match=r"256 bytes long"):
        validate_pattern("#." + "x" * (MAX_TOPIC_BYTES - 1))


def test_topic_limit_counts_utf8_bytes_not_characters() -> None:
    with pytest.raises(InvalidTopic, match=r"256 bytes long"):
        validate_topic("é" * 128)


@pytest.mark.parametrize(
    "pattern", ["#", "*", "shop.#", "shop.order.*", "*.#", "#.*", "a.#.b.#.c", "*.*.*", "#.#"]
)
def test_valid_pattern_is_returned_unchanged(pattern: str) -> None:
    assert validate_pattern(pattern) == pattern


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("", "empty pattern"),
        ("#." + "x" * 254, "256 bytes long"),
        ("shop.order*", "word 2 is 'order*'"),
        ("shop.#x", "word 2 is '#x'"),
        ("**", "word 1 is '**'"),
        ("a..#", "word 2 is an empty word"),
        ("a.#.", "word 3 is an empty word"),
    ],
)
def test_invalid_pattern_is_rejected_with_the_reason(pattern: str, reason: str) -> None:
    with pytest.raises(InvalidTopic, match=re.escape(reason)):
        validate_pattern(pattern)


def test_pattern_message_lists_the_wildcards() -> None:
    with pytest.raises(InvalidTopic, match=re.escape("or a lone * or #")):
        validate_pattern("shop.*order")


def test_invalid_topic_is_a_value_error_and_a_signalbus_error() -> None:
    assert issubclass(InvalidTopic, ValueError)
    assert issubclass(InvalidTopic, SignalbusError)
    with pytest.raises(ValueError, match="empty topic"):
        validate_topic("")


@pytest.mark.parametrize("function", [matches, pattern_within])
def test_matching_and_containment_reject_a_bad_pattern(function: object) -> None:
    with pytest.raises(InvalidTopic, match="pattern"):
        function("shop..x", "shop.x")  # type: ignore[operator]


word_text = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-~%:",
    min_size=1,
    max_size=60,
)


@PROPERTY
@given(st.lists(word_text, min_size=1, max_size=6))
def test_any_dotted_words_within_the_limit_are_a_topic(words: list[str]) -> None:
    topic = ".".join(words)
    if len(topic.encode()) <= MAX_TOPIC_BYTES:
        assert validate_topic(topic) == topic
    else:
        with pytest.raises(InvalidTopic, match="bytes long"):
            validate_topic(topic)


@PROPERTY
@given(st.lists(word_text, min_size=1, max_size=4), st.characters(exclude_characters="."))
def test_a_character_outside_the_word_alphabet_makes_a_bad_topic(
    words: list[str], bad: str
) -> None:
    if WORD.fullmatch(bad):
        return
    topic = ".".join([*words[:-1], words[-1] + bad])
    with pytest.raises(InvalidTopic):
        validate_topic(topic)


# -- pk words -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pk", "word"),
    [
        ("acme.corp", "acme%2Ecorp"),
        ("50%", "50%25"),
        (42, "42"),
        ("a b", "a%20b"),
        ("é", "%C3%A9"),
        ("a/b", "a%2Fb"),
        ("*", "%2A"),
        ("#", "%23"),
        ("Az09_-~:", "Az09_-~:"),
        ("0193a1c4-e8f2-7b5e-9c1d-2a3b4c5d6e7f", "0193a1c4-e8f2-7b5e-9c1d-2a3b4c5d6e7f"),
    ],
)
def test_pk_word_percent_encodes_in_upper_case_hex(pk: object, word: str) -> None:
    assert pk_word(pk) == word


def test_empty_pk_has_no_word() -> None:
    with pytest.raises(InvalidTopic, match="empty primary key"):
        pk_word("")


pk_text = st.text(min_size=1, max_size=40)


@PROPERTY
@given(pk_text, pk_text)
def test_two_different_keys_never_share_a_word(a: str, b: str) -> None:
    if a != b:
        assert pk_word(a) != pk_word(b)


@PROPERTY
@given(pk_text)
def test_pk_word_decodes_back_to_the_key(pk: str) -> None:
    assert urllib.parse.unquote(pk_word(pk), errors="strict") == pk


@PROPERTY
@given(pk_text)
def test_pk_word_is_always_one_valid_word_with_upper_case_escapes(pk: str) -> None:
    word = pk_word(pk)
    assert WORD.fullmatch(word)
    assert not re.search(r"%(?![0-9A-F]{2})", word)
    topic = f"shop.order.{word}.updated"
    if len(topic.encode()) <= MAX_TOPIC_BYTES:
        assert validate_topic(topic) == topic


# -- matching -----------------------------------------------------------------------------


@cache
def reference_match(pattern: tuple[str, ...], topic: tuple[str, ...]) -> bool:
    """The AMQP rule, recursively: ``*`` eats one word, ``#`` zero or more."""
    if not pattern:
        return not topic
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return reference_match(rest, topic) or (bool(topic) and reference_match(pattern, topic[1:]))
    if not topic:
        return False
    return head in ("*", topic[0]) and reference_match(rest, topic[1:])


def ref(pattern: str, topic: str) -> bool:
    return reference_match(tuple(pattern.split(".")), tuple(topic.split(".")))


LITERALS = ("a", "b")
pattern_word = st.sampled_from([*LITERALS, "*", "#"])
topic_word = st.sampled_from([*LITERALS, "c"])
topics = st.lists(topic_word, min_size=1, max_size=7).map(".".join)


@st.composite
def topic_near(draw: st.DrawFn, pattern: str) -> str:
    """A topic built from the pattern (so that it often matches), sometimes mutated."""
    words: list[str] = []
    for word in pattern.split("."):
        if word == "*":
            words.append(draw(topic_word))
        elif word == "#":
            words.extend(draw(st.lists(topic_word, max_size=3)))
        else:
            words.append(word)
    if draw(st.booleans()) and words:
        words[draw(st.integers(0, len(words) - 1))] = draw(topic_word)
    return ".".join(words or [draw(topic_word)])


@st.composite
def pattern_and_topic(draw: st.DrawFn, patterns: st.SearchStrategy[str]) -> tuple[str, str]:
    pattern = draw(patterns)
    topic = draw(st.one_of(topics, topic_near(pattern)))
    return pattern, topic


def hash_count(pattern: str) -> int:
    """``#`` words once runs of ``#`` are folded (``#.#`` is ``#``)."""
    return sum(1 for word, _ in itertools.groupby(pattern.split(".")) if word == "#")


any_pattern = st.lists(pattern_word, min_size=1, max_size=7).map(".".join)
one_hash_at_most = any_pattern.filter(lambda p: hash_count(p) <= 1)


@st.composite
def several_hashes(draw: st.DrawFn) -> str:
    """Two or more ``#`` separated by other words: the NFA path of `compile_pattern`."""
    parts = [draw(st.lists(pattern_word, max_size=2))]
    for _ in range(draw(st.integers(2, 3))):
        parts.append(["#"])
        parts.append(draw(st.lists(st.sampled_from([*LITERALS, "*"]), min_size=1, max_size=2)))
    pattern = ".".join(w for part in parts for w in part)
    assert hash_count(pattern) >= 2
    return pattern


@PROPERTY
@given(pattern_and_topic(one_hash_at_most))
def test_pattern_with_at_most_one_hash_matches_as_amqp_defines(case: tuple[str, str]) -> None:
    pattern, topic = case
    assert matches(pattern, topic) is ref(pattern, topic)


@PROPERTY
@given(pattern_and_topic(several_hashes()))
def test_pattern_with_several_hashes_matches_as_amqp_defines(case: tuple[str, str]) -> None:
    pattern, topic = case
    assert matches(pattern, topic) is ref(pattern, topic)


@PROPERTY
@given(pattern_and_topic(any_pattern))
def test_compiled_pattern_agrees_with_matches(case: tuple[str, str]) -> None:
    pattern, topic = case
    assert bool(compile_pattern(pattern)(topic)) is ref(pattern, topic)


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("shop.order.*", "shop.order.42", True),
        ("shop.order.*", "shop.order.42.updated", False),
        ("shop.order.*", "shop.order", False),
        ("shop.#", "shop", True),
        ("shop.#", "shop.order.42.updated", True),
        ("shop.#", "shopping.list", False),
        ("#", "anything.at.all", True),
        ("*", "one", True),
        ("*", "one.two", False),
        ("#.updated", "updated", True),
        ("#.updated", "shop.order.1.updated", True),
        ("a.#.b.#.c", "a.b.c", True),
        ("a.#.b.#.c", "a.x.b.y.z.c", True),
        ("a.#.b.#.c", "a.c.b", False),
        ("#.#.x", "x", True),
        ("user.1", "user.10", False),
        ("shop.order", "shop.order", True),
        ("shop.order", "shop.orders", False),
        ("a.*.c", "a..c", False),
    ],
)
def test_contract_examples_match_as_documented(pattern: str, topic: str, expected: bool) -> None:
    assert matches(pattern, topic) is expected


# -- containment --------------------------------------------------------------------------


def reference_within(inner: str, outer: str) -> bool:
    """Every topic that ``inner`` matches, among all topics over the literals of both
    patterns plus one fresh word, is matched by ``outer``.

    Topics are enumerated up to one word longer than the longer pattern; for every pair of
    patterns over ``a b * #`` of up to 4 and 3 words that agreed with enumerating up to the
    sum of their lengths, so it is enough for the sizes generated here.
    """
    max_words = max(len(inner.split(".")), len(outer.split("."))) + 1
    alphabet = sorted({w for w in (*inner.split("."), *outer.split(".")) if w not in "*#"})
    alphabet.append(FRESH)
    for length in range(1, max_words + 1):
        for words in itertools.product(alphabet, repeat=length):
            topic = ".".join(words)
            if ref(inner, topic) and not ref(outer, topic):
                return False
    return True


short_pattern = st.lists(pattern_word, min_size=1, max_size=3).map(".".join)


@PROPERTY
@given(short_pattern, short_pattern)
def test_containment_agrees_with_brute_force_enumeration(inner: str, outer: str) -> None:
    assert pattern_within(inner, outer) is reference_within(inner, outer)


two_hashes_in_five_words = st.builds(
    lambda head, middle, tail: ".".join([*head, "#", middle, "#", *tail]),
    st.lists(pattern_word, max_size=1),
    st.sampled_from([*LITERALS, "*"]),
    st.lists(pattern_word, max_size=1),
)


def every_pattern(max_words: int) -> list[str]:
    words = [*LITERALS, "*", "#"]
    return [
        ".".join(p) for n in range(1, max_words + 1) for p in itertools.product(words, repeat=n)
    ]


def test_containment_agrees_with_brute_force_for_every_pair_of_short_patterns() -> None:
    patterns = every_pattern(2)
    for inner, outer in itertools.product(patterns, repeat=2):
        assert pattern_within(inner, outer) is reference_within(inner, outer), (inner, outer)


@settings(PROPERTY, max_examples=100)
@given(two_hashes_in_five_words, short_pattern)
def test_containment_of_several_hash_patterns_agrees_with_brute_force(
    inner: str, outer: str
) -> None:
    assert pattern_within(inner, outer) is reference_within(inner, outer)
    assert pattern_within(outer, inner) is reference_within(outer, inner)


@PROPERTY
@given(any_pattern)
def test_every_pattern_lies_within_itself_and_within_hash(pattern: str) -> None:
    assert pattern_within(pattern, pattern)
    assert pattern_within(pattern, "#")


@pytest.mark.parametrize(
    ("inner", "outer", "expected"),
    [
        ("shop.#", "shop.order.*", False),
        ("shop.order.*", "shop.#", True),
        ("shop.order.42.*", "shop.order.*.*", True),
        ("shop.order.*.*", "shop.order.42.*", False),
        ("user.1", "user.10", False),
        ("user.10", "user.1", False),
        ("user.1", "user.1", True),
        ("*.#", "#.*", True),
        ("#.*", "*.#", True),
        ("#", "*.#", True),
        ("*.#", "#", True),
        ("#", "*", False),
        ("*", "#", True),
        ("shop.#", "shop.*.#", False),
        ("shop.*.#", "shop.#", True),
        ("a.#.b", "a.#", True),
        ("a.#", "a.#.b", False),
        ("#.#", "#", True),
    ],
)
def test_contract_containment_examples(inner: str, outer: str, expected: bool) -> None:
    assert pattern_within(inner, outer) is expected
