"""The intervention parser on well-formed, malformed and adversarial answers."""

import pytest

from ipgkit.tasks.verification import Intervention, parse_intervention, parse_intervention_text


def block(body: str, close: bool = True) -> str:
    return f"<intervention>{body}" + ("</intervention>" if close else "")


@pytest.mark.parametrize(
    ("text", "expected", "status", "repairs"),
    [
        (block('{"location": 2, "content": "38-7=31"}'), (2, "38-7=31"), "ok", ()),
        (
            "Thinking... " + block('{"location": 3, "content": "5*4=20"}') + " done",
            (3, "5*4=20"),
            "ok",
            (),
        ),
        (block("{'location': 2, 'content': '38-7=31'}"), (2, "38-7=31"), "repaired", ("quotes",)),
        (block('{"location": "4", "content": "x"}'), (4, "x"), "repaired", ("location_text",)),
        (block('{"location": "step 4", "content": "x"}'), (4, "x"), "repaired", ("location_text",)),
        (block('{"location": 4.0, "content": "x"}'), (4, "x"), "repaired", ("location_text",)),
        (
            block('{"location": 2, "content": "a\nb",}'),
            (2, "a\nb"),
            "repaired",
            ("escapes", "trailing_comma"),
        ),
        (
            block('{"location": 2, "content": "12+4=16"}', close=False),
            (2, "12+4=16"),
            "repaired",
            ("unclosed",),
        ),
        (
            block('```json\n{"location": 1, "content": "9-3=6"}\n```'),
            (1, "9-3=6"),
            "repaired",
            ("fenced",),
        ),
        (
            block(r'{"location": 2, "content": "x = \frac{1}{2}"}'),
            (2, r"x = \frac{1}{2}"),
            "repaired",
            ("latex",),
        ),
        (
            block('location: 3, content: "12+4=16"'),
            (3, "12+4=16"),
            "repaired",
            ("regex", "location_text"),
        ),
    ],
)
def test_well_formed_and_repairable_answers(text, expected, status, repairs):
    outcome = parse_intervention_text(text)
    assert outcome.intervention == Intervention(*expected)
    assert outcome.status == status and outcome.repairs == repairs


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("no block at all", "no_block"),
        ("", "no_block"),
        (block("{broken"), "bad_json"),
        (block("[1, 2]"), "bad_json"),
        (block('{"location": 0, "content": "x"}'), "bad_location"),
        (block('{"location": -3, "content": "x"}'), "bad_location"),
        (block('{"location": true, "content": "x"}'), "bad_location"),
        (block('{"location": 2.5, "content": "x"}'), "bad_location"),
        (block('{"location": "second", "content": "x"}'), "bad_location"),
        (block('{"content": "x"}'), "bad_location"),
        (block('{"location": 2, "content": "   "}'), "empty_content"),
        (block('{"location": 2, "content": null}'), "empty_content"),
        (block('{"location": 2}'), "empty_content"),
    ],
)
def test_unparsable_answers_say_why(text, status):
    outcome = parse_intervention_text(text)
    assert outcome.intervention is None and outcome.status == status


def test_adversarial_answers():
    good = block('{"location": 2, "content": "b"}')
    # the last readable block wins; a broken later block falls back to an earlier good one
    assert parse_intervention(block('{"location": 1, "content": "a"}') + good) == Intervention(
        2, "b"
    )
    assert parse_intervention(good + block("{oops")) == Intervention(2, "b")
    # an opening tag inside the content splits the block: nothing readable, rather than a wrong fix
    nested = block('{"location": 3, "content": "see <intervention> tag"}')
    assert parse_intervention_text(nested).status == "bad_json"
    # huge numbers and long content parse, the caller checks the range
    assert (
        parse_intervention(block('{"location": 99999999999, "content": "x"}')).location
        == 99999999999
    )
    assert (
        parse_intervention(block('{"location": 1, "content": "' + "7" * 5000 + '"}')).content
        == "7" * 5000
    )
    # extra fields are ignored; unicode survives
    assert parse_intervention(
        block('{"location": 1, "content": "x ≥ 2", "why": 3}')
    ) == Intervention(1, "x ≥ 2")
