"""PII and secret scrubbing: replace personal data with typed placeholders and count them.

In-house text leaks e-mail addresses, phone numbers, IP addresses, credentials and card
numbers; a model pretrained on them can regurgitate them. `scrub` replaces each with a
placeholder naming its kind ([EMAIL], [PHONE], [IP], [CREDENTIALS], [CREDIT_CARD], [SECRET],
[PRIVATE_KEY]) and returns how many of each it replaced. The patterns are tuned against false
positives on ordinary text: dates, times, prices, years, scores and plain numbers stay.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

PII_TYPES = ("email", "phone", "ip", "url_credentials", "credit_card", "secret")

_PRIVATE_KEY = re.compile(
    r"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----.*?-----END \1-----", re.S)
_URL_CREDENTIALS = re.compile(r"\b([a-z][a-z0-9+.-]*://)[^\s/:@\[\]]+:[^\s/@]+@", re.I)
_SECRET = re.compile(  # one alternation: one scan of the text instead of ten
    r"\b(?:(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16}"  # AWS access key id
    r"|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}"  # GitHub
    r"|glpat-[A-Za-z0-9_-]{20,}"  # GitLab
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API key
    r"|(?:sk|rk|pk)_(?:live|test)_[0-9A-Za-z]{16,}"  # Stripe
    r"|sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"  # OpenAI / Anthropic style
    r"|hf_[A-Za-z0-9]{30,}"  # Hugging Face
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JWT
    r")\b")
# `password: hunter2`, `api_key = "..."`, `aws_secret_access_key=...`: keep the name, hide the value.
_ASSIGNED_SECRET = re.compile(
    r"(?i)(api[_-]?key|secret(?:[_-]?(?:access[_-]?)?key)?|access[_-]?token|auth[_-]?token|"
    r"client[_-]?secret|password|passwd|pwd)\b([\"']?\s*[:=]\s*)(?![\[\s])([\"']?)([^\s\"']{6,})\3")
_SECRET_NAMES = ("api", "secret", "token", "passw", "pwd")
_DOTTED_QUAD = re.compile(r"\d\.\d{1,3}\.\d{1,3}\.\d")
_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b")
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\d.])(?:{_OCTET}\.){{3}}{_OCTET}(?![\d]|\.\d)")
_H = r"[0-9A-Fa-f]{1,4}"
_IPV6 = re.compile(
    rf"(?<![\w:])(?:(?:{_H}:){{7}}{_H}|(?:{_H}:){{1,6}}:(?:{_H}:){{0,5}}{_H}|::(?:{_H}:){{0,5}}{_H}"
    rf"|(?:{_H}:){{1,7}}:)(?![\w:])")
_PHONE = re.compile(
    r"(?<![\w+.-])(?:"
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{2,4}){1,4}"  # +44 20 7946 0958
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"  # (555) 123-4567
    r"|\d{3}[.-]\d{3}[.-]\d{4}"  # 555-123-4567
    r"|0\d{2,4}[ -]\d{3,4}[ -]?\d{3,4}"  # 020 7946 0958, 01632 960 001
    r")(?![\w-]|\.\d)")


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of card numbers."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_issuer(digits: str) -> bool:
    """Digits that begin like a real card number (Visa, Mastercard, Amex, Discover, JCB, Diners)."""
    n = len(digits)
    two, four = int(digits[:2]), int(digits[:4])
    return ((digits[0] == "4" and n in (13, 16, 19)) or (51 <= two <= 55 and n == 16)
            or (2221 <= four <= 2720 and n == 16) or (two in (34, 37) and n == 15)
            or ((four == 6011 or two == 65 or 644 <= int(digits[:3]) <= 649) and n in (16, 19))
            or (3528 <= four <= 3589 and n in (16, 19)) or (two in (36, 38, 39) and n in (14, 16))
            or (300 <= int(digits[:3]) <= 305 and n in (14, 16)))


def _card(match: re.Match) -> str | None:
    text = match.group(0)
    digits = re.sub(r"\D", "", text)
    seps = set(re.findall(r"[ -]", text))
    if len(seps) > 1 or not 13 <= len(digits) <= 19:
        return None
    if _card_issuer(digits) and luhn_valid(digits):
        return "[CREDIT_CARD]"
    return None


def _phone(match: re.Match) -> str | None:
    digits = re.sub(r"\D", "", match.group(0))
    return "[PHONE]" if 9 <= len(digits) <= 15 else None


def _ipv6(match: re.Match) -> str | None:
    text = match.group(0)
    groups = [g for g in text.split(":") if g]
    # "12:30:45" is a time, not an address: ask for a "::" or 8 groups and hex or 3+ groups
    if ("::" not in text and len(groups) < 8) or len(groups) < 2 and text != "::1":
        return None
    if not re.search(r"[a-fA-F]", text) and len(groups) < 3:
        return None
    return "[IP]"


def scrub(text: str, types: Iterable[str] = PII_TYPES) -> tuple[str, Counter]:
    """Replace PII of the given kinds with typed placeholders; return the text and the counts."""
    types = set(types)
    counts: Counter = Counter()

    def sub(pattern: re.Pattern, kind: str, text: str, repl) -> str:
        def one(match: re.Match) -> str:
            out = repl(match) if callable(repl) else match.expand(repl)
            if out is None:
                return match.group(0)
            counts[kind] += 1
            return out

        return pattern.sub(one, text)

    if "secret" in types:
        if "PRIVATE KEY" in text:
            text = sub(_PRIVATE_KEY, "secret", text, "[PRIVATE_KEY]")
        text = sub(_SECRET, "secret", text, "[SECRET]")
        lower = text.lower()
        if any(name in lower for name in _SECRET_NAMES):
            text = sub(_ASSIGNED_SECRET, "secret", text, r"\1\2\3[SECRET]\3")
    if "url_credentials" in types and "://" in text:
        text = sub(_URL_CREDENTIALS, "url_credentials", text, r"\1[CREDENTIALS]@")
    if "email" in types and "@" in text:
        text = sub(_EMAIL, "email", text, "[EMAIL]")
    if "credit_card" in types:
        text = sub(_CARD, "credit_card", text, _card)
    if "ip" in types:
        if _DOTTED_QUAD.search(text):
            text = sub(_IPV4, "ip", text, "[IP]")
        if "::" in text or text.count(":") >= 7:
            text = sub(_IPV6, "ip", text, _ipv6)
    if "phone" in types:
        text = sub(_PHONE, "phone", text, _phone)
    return text, counts
