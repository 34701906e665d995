"""mlm.corpus.privacy: PII scrubbing."""
from __future__ import annotations

import pytest

from mlm.config import PrivacyConfig
from mlm.corpus.privacy import PII_TYPES, iban_valid, luhn_valid, scrub, ssn_valid
from tests.corpus.conftest import all_texts, build

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize("text, kind, placeholder", [
    ("write to jane.doe@example.co.uk today", "email", "[EMAIL]"),
    ("call +44 20 7946 0958 now", "phone", "[PHONE]"),
    ("call (555) 123-4567 now", "phone", "[PHONE]"),
    ("call 020 7946 0958 now", "phone", "[PHONE]"),
    ("host 192.168.10.4 is down", "ip", "[IP]"),
    ("host 2001:db8:85a3::8a2e:370:7334 is down", "ip", "[IP]"),
    ("clone https://bob:hunter22@git.example.com/x.git", "url_credentials", "[CREDENTIALS]"),
    ("paid with 4111 1111 1111 1111 yesterday", "credit_card", "[CREDIT_CARD]"),
    ("paid with 5500-0000-0000-0004 yesterday", "credit_card", "[CREDIT_CARD]"),
    ("key AKIAIOSFODNN7EXAMPLE in config", "secret", "[SECRET]"),
    ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789AB leaked", "secret", "[SECRET]"),
    ('db password: "correcthorse" in notes', "secret", "[SECRET]"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKC\n-----END RSA PRIVATE KEY-----", "secret",
     "[PRIVATE_KEY]"),
])
def test_scrub_finds_each_kind(text, kind, placeholder):
    out, counts = scrub(text)
    assert placeholder in out and counts == {kind: 1}, (out, counts)


@pytest.mark.parametrize("text, expected, kind", [
    # international phone numbers, judged by phonenumbers
    ("Ruf an: +49 30 12345678.", "Ruf an: [PHONE].", "phone"),
    ("Büro +49 (0)89 1234567 ab 9 Uhr", "Büro [PHONE] ab 9 Uhr", "phone"),
    ("Paris +33 1 42 68 53 00", "Paris [PHONE]", "phone"),
    ("Tel. 089 1234567", "Tel. [PHONE]", "phone"),  # national, after a phone word
    ("call 1-800-555-0199 now", "call [PHONE] now", "phone"),
    ("Zentrale (+49) 30 12345678", "Zentrale [PHONE]", "phone"),
    # IBAN: its own kind, grouped or not, never half a phone number
    ("Überweisung an DE89 3704 0044 0532 0130 00 bitte", "Überweisung an [IBAN] bitte", "iban"),
    ("IBAN: GB82WEST12345698765432.", "IBAN: [IBAN].", "iban"),
    ("pay GB82 WEST 1234 5698 7654 32 today", "pay [IBAN] today", "iban"),
    # US SSN
    ("SSN 123-45-6789 on file", "SSN [SSN] on file", "ssn"),
    ("social security number: 078 05 1120", "social security number: [SSN]", "ssn"),
    # AWS secret access key, in a credentials file, an env line, JSON and prose
    (f"aws_secret_access_key = {AWS_SECRET}", "aws_secret_access_key = [SECRET]", "secret"),
    (f"export AWS_SECRET_ACCESS_KEY={AWS_SECRET}", "export AWS_SECRET_ACCESS_KEY=[SECRET]", "secret"),
    (f'{{"SecretAccessKey": "{AWS_SECRET}"}}', '{"SecretAccessKey": "[SECRET]"}', "secret"),
    (f"the AWS secret key is {AWS_SECRET}.", "the AWS secret key is [SECRET].", "secret"),
    # literal secrets in assignments stay caught
    ("password=hunter22", "password=[SECRET]", "secret"),
    ("DB_PASSWORD=piFhqRmjrwSr", "DB_PASSWORD=[SECRET]", "secret"),
    ("GET /v1?api_key=XzZevGjyiKxiqkm", "GET /v1?api_key=[SECRET]", "secret"),
    ("mount -o 'ftp-password=xieyanbo'", "mount -o 'ftp-password=[SECRET]'", "secret"),
])
def test_scrub_new_kinds_exactly(text, expected, kind):
    out, counts = scrub(text)
    assert (out, counts) == (expected, {kind: 1})


@pytest.mark.parametrize("text", [
    # the false hits found on 9.8 MB of code documentation (issue #17)
    "Requires-Dist: novas==3.1.1.3",
    "numpy.finfo: eps is 5.5511151231257827e-017 here",
    "indices 012 013 023 123 of the cube",
    "topsecret = config['db_password']",
    ".. module:: pwd\n   :platform: Unix",
    "pwd :platform: Unix",
    # versions and floats like them
    "lz4>=1.7.4.2; brotli >= 1.2.1.0; version 1.2.0.0; v1.0.0.1",
    ">>> hist.sum()\n2.2572053268208538\n>>> 0.4999999999999996",
    # secrets assigned from code or written as placeholders
    "secret = config['key']",
    '{"secret": aws_secret_access_key}',
    "password = getpass.getpass()",
    "token: Optional[str] = None",
    'api_key="your-api-key"  # and token="hf_..." and webhook_secret="my-secret"',
    "password: ******** and password=${DB_PASS}",
    # addresses of no host, SSH remotes, numbers that are no SSN or IBAN
    "bind 127.0.0.1 or 0.0.0.0, netmask 255.255.255.0",
    "git clone git@github.com:owner/repo.git",
    "ids 666-12-3456 000-12-3456 123-00-4567 123-45-0000 912-34-5678",
    "DE89 3704 0044 0532 0130 01",
    # digits after a "+" that no country's numbers have, section numbers, URL logins
    "+1 234 5678 901 23 and x = +123456789012",
    "RFC 5891 §4.2.3.2 says",
    "https://user:pass@example.com/x, ssh://git@example.com/repo.git, https://<user>:<password>@host",
])
def test_no_false_hits_on_code_documentation(text):
    assert scrub(text) == (text, {})


def test_checksums():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("DE89 3704 0044 0532 0130 00") and iban_valid("GB82WEST12345698765432")
    assert not iban_valid("DE89 3704 0044 0532 0130 01")  # checksum
    assert not iban_valid("DE89 3704 0044 0532 0130 0")  # length of a German IBAN
    assert ssn_valid("078-05-1120") and not ssn_valid("666-05-1120") and not ssn_valid("900-05-1120")


def test_luhn_and_no_false_positives():
    out, counts = scrub("card 4111 1111 1111 1112 and 1234 5678 9012 3456")
    assert not counts, out
    ordinary = ("On 2004-05-12 at 10:30:45 shares rose 3.5% to $1,234,567.89 (12/05/2004). "
                "Score 3-1 in 1999; 25,000,000 people; ISBN 978-0-306-40615-7; order 1234567890123; "
                "ratio 16:9; call at 12:30; pi is 3.14159265358979; version 2.0.1 was released.")
    out, counts = scrub(ordinary)
    assert out == ordinary and not counts


def test_types_select_kinds():
    text = "SSN 123-45-6789, IBAN GB82WEST12345698765432, mail jane@example.com"
    assert scrub(text, ["ssn"]) == (
        "SSN [SSN], IBAN GB82WEST12345698765432, mail jane@example.com", {"ssn": 1})
    assert scrub(text, ["iban", "email"])[1] == {"iban": 1, "email": 1}
    assert PrivacyConfig().pii_types == list(PII_TYPES)


def test_pii_counted_in_stats(tmp_path, articles):
    f = tmp_path / "t.txt"
    f.write_text(articles[0] + ("\nPlease contact jane@example.com about the server at 192.168.0.1 "
                                 "and the card 4111111111111111 today; refunds go to "
                                 "DE89 3704 0044 0532 0130 00.")
                 + "\n\n" + articles[1])
    ds, stats = build(tmp_path, [{"path": str(f), "document": "paragraph"}])
    assert stats["pii"] == {"credit_card": 1, "email": 1, "iban": 1, "ip": 1}
    assert "jane@example.com" not in "".join(all_texts(ds))
    ds, stats = build(tmp_path, [{"path": str(f), "document": "paragraph"}],
                      privacy={"pii_types": ["email"]})
    assert stats["pii"] == {"email": 1}
