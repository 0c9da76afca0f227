"""redact_text: the command-line rules of otelproc.redact applied to an exception's message and stack."""

from __future__ import annotations

import traceback

import pytest

from otelproc.app.deaths import bounded_trace
from otelproc.redact import redact_text

SECRET_TEXT = [
    ("bad config: password=hunter2 (app.py:4)", "bad config: password=*** (app.py:4)"),
    ("{'password': 'hunter2', 'user': 'bob'}", "{'password': '***', 'user': 'bob'}"),
    ('{"api_token": "abc123", "x": 1}', '{"api_token": "***", "x": 1}'),
    ("connect(host='db', password=\"hunter2\")", "connect(host='db', password=\"***\")"),
    ("secret = 'hunter2'", "secret = '***'"),
    ("Authorization: Bearer abcdefgh123", "Authorization: Bearer ***"),
    ("X-Api-Key: 0123abcd", "X-Api-Key: ***"),
    ("--password hunter2 --user bob", "--password *** --user bob"),
    ("--db-token=x", "--db-token=***"),
    ("x=1 password=p2 y=2 secret=s3", "x=1 password=*** y=2 secret=***"),
    ("lost redis://app:hunter2@127.0.0.1:6379/0", "lost redis://app:***@127.0.0.1:6379/0"),
    ("GET https://x/cb?code=1&access_token=zz", "GET https://x/cb?code=1&access_token=***"),
    ("key ghp_" + "A1b2C3d4E5" * 4, "key ***"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nabc\n-----END RSA PRIVATE KEY-----\nafter", "***\nafter"),
]

HARMLESS_TEXT = [
    "the password is required",
    "KeyError: 'token'",
    "  File \"/srv/app.py\", line 4, in <module>\n    raise ValueError(f'bad config password={PW}')",
    '  File "/usr/lib/python3/site-packages/passlib/x.py", line 3, in check_password',
    "ZeroDivisionError: division by zero",
]


@pytest.mark.parametrize(("text", "redacted"), SECRET_TEXT)
def test_secrets_in_text_are_masked(text, redacted):
    assert redact_text(text) == redacted


@pytest.mark.parametrize("text", HARMLESS_TEXT)
def test_harmless_text_is_left_alone(text):
    assert redact_text(text) == text


def test_a_long_trace_keeps_its_ends_and_says_what_it_left_out():
    frames = "".join(traceback.format_stack()) * 50
    text = f'Traceback (most recent call last):\n{frames}  File "app.py", line 9, in f\nValueError: password=hunter2\n'
    bounded = bounded_trace(text, 8192)
    assert len(text) > 4 * 8192 and len(bounded) <= 8192
    assert bounded.startswith("Traceback (most recent call last):\n")
    assert bounded.endswith('  File "app.py", line 9, in f\nValueError: password=***\n')
    assert "characters left out ...]\n" in bounded
