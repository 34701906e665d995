"""PII and secret scrubbing: replace personal data with typed placeholders and count them.

In-house text leaks e-mail addresses, phone numbers, IP addresses, credentials, card and bank
account numbers, national IDs and keys; a model pretrained on them can regurgitate them. `scrub`
replaces each with a placeholder naming its kind ([EMAIL], [PHONE], [IP], [CREDENTIALS],
[CREDIT_CARD], [IBAN], [SSN], [SECRET], [PRIVATE_KEY]) and returns how many of each it replaced.

Every kind is checked beyond its shape, because technical text is full of look-alikes: card
numbers by issuer prefix and Luhn checksum, IBANs by country length and mod-97 checksum, SSNs by
the ranges never issued, international phone numbers by the numbering plans of the maintained
`phonenumbers` library. Version strings (`pkg==3.1.1.3`), floats, digit lists, RST fields,
addresses of no host (127.0.0.1, 0.0.0.0, netmasks) and secrets assigned from code
(`secret = config['key']`) or placeholders (`api_key="your-api-key"`) are left alone;
bench/bench_pii.py measures recall and false hits per MB of code documentation.
"""
from __future__ import annotations

import re
import urllib.parse
from collections import Counter
from collections.abc import Iterable

import phonenumbers

PII_TYPES = ("email", "phone", "ip", "url_credentials", "credit_card", "iban", "ssn", "secret")

_PRIVATE_KEY = re.compile(
    r"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----.*?-----END \1-----", re.S)
_URL_CREDENTIALS = re.compile(r"\b([a-z][a-z0-9+.-]*://)[^\s/:@\[\]]+:([^\s/@]+)@", re.I)
# Most regexes begin with a character class and check what precedes it by a lookbehind after
# it: Python's re then skips ahead in C to the next possible start (several times faster).
_SECRET = re.compile(  # one alternation: one scan of the text instead of ten
    r"[Aghxsrpe](?<!\w[Aghxsrpe])(?:(?<=A)(?:KIA|SIA|GPA|IDA|ROA|NPA)[0-9A-Z]{16}"  # AWS key id
    r"|(?<=g)(?:h[pousr]_[A-Za-z0-9]{36,}|ithub_pat_[A-Za-z0-9_]{22,})"  # GitHub
    r"|(?<=g)lpat-[A-Za-z0-9_-]{20,}"  # GitLab
    r"|(?<=x)ox[abposr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|(?<=A)Iza[0-9A-Za-z_-]{35}"  # Google API key
    r"|(?<=[srp])k_(?:live|test)_[0-9A-Za-z]{16,}"  # Stripe
    r"|(?<=s)k-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"  # OpenAI / Anthropic style
    r"|(?<=h)f_[A-Za-z0-9]{30,}"  # Hugging Face
    r"|(?<=e)yJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JWT
    r")(?!\w)")
_SECRET_PREFIXES = ("AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA", "ghp_", "gho_", "ghu_", "ghs_",
                    "ghr_", "github_pat_", "glpat-", "xox", "AIza", "_live_", "_test_", "sk-", "hf_",
                    "eyJ")
# An AWS secret access key: 40 base64 characters, within 60 characters after "aws" or "secret".
_AWS_SECRET = re.compile(
    r"([sSaA](?:(?<=\b[aA])(?i:ws)|(?<=[sS])(?i:ecret))[^\n]{0,60}?)"
    r"(?<![A-Za-z0-9/+=])([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])")
# `password: hunter2`, `api_key = "..."`, `aws_secret_access_key=...`, `"SecretAccessKey": "..."`:
# keep the name, hide the value. A colon must touch the name (`pwd :platform:` is RST); a prefix
# joined by _ or - stays outside the match (`aws_`); values are judged by `_assigned_secret`.
_ASSIGNED_SECRET = re.compile(
    r"([AaSsPpTtCc](?<![A-Za-z0-9][AaSsPpTtCc])(?i:pi[_-]?key|ecret(?:[_-]?(?:access[_-]?)?key)?"
    r"|ccess[_-]?(?:token|key)|uth[_-]?token|lient[_-]?secret|ccount[_-]?key|rivate[_-]?key"
    r"|assword|asswd|wd|oken))\b"
    r"([\"']?(?:[ \t]*=>?(?!=)[ \t]*|:[ \t]*))"
    r"(?:([\"'])([^\s\"']{6,})\3|([^\s\"'`,;)}\]]{6,}))")
# Cheap test for the above: a ":" or "=" after the end of a name, a quote or blanks between.
_SECRET_SEP = re.compile("[:=](?:" + "|".join(
    rf"(?<=(?i:key|ken|ret|ord|swd|pwd){gap}[:=])" for gap in ("", "[\"' \t]", "[\"'][ \t]", "[ \t]{2}"))
    + ")")
_PLACEHOLDER = re.compile(  # ..., <token>, {{ secret }}, ${PASS}, %(pw)s, ***, xxxx, [SECRET]
    r"\.\.\.|…|<[\w .-]*>|\{\{?\s*[\w.]*\s*\}|\$\{?[A-Za-z_]\w*\}?$|^\$|%\(\w+\)[sd]"
    r"|[*#•]{3}|(.)\1{3}|^\[[A-Z_]+\]$|^(?i:none|null|true|false|changeme)$")
_PLACEHOLDER_WORDS = frozenset(
    "my your our the some secret key token password pass pwd api access value example sample dummy "
    "fake test placeholder here xxx foo bar changeme insert replace".split())
# `password1`, `mypassword`, `your_token`: a name for a secret, not one
_PLACEHOLDER_NAME = re.compile(
    r"(?:my|your|our|the|some|example|dummy|fake|test)?[ _.-]?"
    r"(?:secret|pass|password|passwd|pwd|token|key|api[ _.-]?key|value)s?\d?", re.I)
_PLACEHOLDER_SPLIT = re.compile(r"[-_. ]")
_URL_LOGIN_BEFORE = re.compile(r"://(?:[^\s/@:]*:)?$")
# how `_assigned_secret` tells code from a literal value
_BRACKET = re.compile(r"[()\[\]{}]")
_NAME = re.compile(r"[A-Za-z_][\w.]*")
_NUMBER = re.compile(r"[\d.,_eE+-]+")
_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b")
# digits inside a float (5.5511151231257827e-017) or a longer run are not a card
_CARD = re.compile(r"\d(?<![\d.,+-]\d)(?:[ -]?\d){12,18}(?![\d-]|[.,]\d|[eE][-+]?\d)")
_CARD_FIRST_GROUP = re.compile(r"\d{4}\D")
_NON_DIGIT = re.compile(r"\D")
_IBAN = re.compile(
    r"[A-Z](?<![\w][A-Z])[A-Z]\d\d(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,4})?)\b")
# Length of the IBAN of each country (SWIFT IBAN registry, as python-stdnum 2.2 ships it).
_IBAN_LENGTH = {c[:2]: int(c[2:]) for c in (
    "AD24 AE23 AL28 AT20 AZ28 BA20 BE16 BG22 BH22 BI27 BR29 BY28 CH21 CR22 CY28 CZ24 DE22 DJ27 "
    "DK18 DO28 EE20 EG29 ES24 FI18 FK18 FO18 FR27 GB22 GE22 GI23 GL18 GR27 GT28 HN28 HR21 HU28 "
    "IE22 IL23 IQ23 IS26 IT27 JO30 KW30 KZ20 LB28 LC32 LI21 LT20 LU20 LV21 LY25 MC27 MD24 ME22 "
    "MK19 MN20 MR27 MT31 MU30 NI28 NL18 NO15 OM23 PK24 PL28 PS29 PT25 QA29 RO24 RS22 RU33 SA24 "
    "SC31 SD18 SE24 SI19 SK24 SM27 SO23 ST25 SV28 TL23 TN24 TR26 UA29 VA22 VG24 XK20 YE30").split()}
# US SSN (ranges never issued are refused by `ssn_valid`): hyphenated anywhere; spaced or bare
# only after a label ("SSN: 123 45 6789").
_SSN = re.compile(r"\d(?<![\w-]\d)\d\d-\d\d-\d{4}(?![\w-])")
_SSN_LABELLED = re.compile(
    r"(?i)\b(ssn|social security (?:number|no\.?))([ \t]*[:#]?[ \t]*)(\d{3}( ?)\d\d\4\d{4})(?![\w-])")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_DOTTED_QUAD = re.compile(r"\d\.\d{1,3}\.\d{1,3}\.\d")
_IPV4 = re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?!\w|\.\d)")
# `novas==3.1.1.3`, `lz4>=1.7.4.2`, `version 1.2.0.0`, `v1.0.0.1` are versions, not addresses
_VERSION_BEFORE = re.compile(r"(?i)(?:[=<>!~]=|[<>§]|\bv\.?|\bversions?:?|\brelease:?|\bsection)\s*$")
_H = r"[0-9A-Fa-f]{1,4}"
_IPV6 = re.compile(
    rf"(?<![\w:])(?:(?:{_H}:){{7}}{_H}|(?:{_H}:){{1,6}}:(?:{_H}:){{0,5}}{_H}|::(?:{_H}:){{0,5}}{_H}"
    rf"|(?:{_H}:){{1,7}}:)(?![\w:]|\.\d)")
# cheap test for the above: hex groups between colons, or a "::" touching hex (not RST's "Example::")
_IPV6_HINT = re.compile(r":(?:[0-9A-Fa-f]{1,4}:){2}[0-9A-Fa-f]|::(?:[0-9A-Fa-f]|(?<=[0-9A-Fa-f]::))")
# Candidates only, each judged by `_phone` with phonenumbers. The regex is the cheap prefilter:
# phonenumbers' PhoneNumberMatcher alone scans news prose at 2 MB/s, a third of all of `scrub`.
_PHONE = re.compile(
    r"[+(\d](?<![\w+.,/-][+(\d])(?:"
    r"(?<=\+)\d{1,3}(?:[ .-]?\(0?\d{0,4}\))?(?:[ .-]?\d{1,5}){1,6}"  # +44 20 7946 0958, +49 (0)89 1234567
    r"|(?<=\()\+\d{1,3}\)(?:[ .-]?\d{1,5}){1,6}"  # (+49) 30 1234567
    r"|(?<=\()\d{3}\)[ .-]?\d{3}[ .-]\d{4}"  # (555) 123-4567
    r"|(?<=\d)\d\d([.-])\d{3}\1\d{4}|(?<=1)[ -]\(?\d{3}\)?[ .-]?\d{3}[ .-]\d{4}"  # 555-123-4567, 1-800-555-0199
    r"|(?<=\d)\d\d \d{3} \d{4}"  # 415 555 2671
    r"|(?<=0)\d{1,4}[ /-]\d{2,8}(?:[ -]\d{2,8}){0,4}"  # 020 7946 0958, 030/12345678, 0049 30 1234567
    r"|(?<=\()0\d{1,4}\)[ /-]?\d{2,8}(?:[ -]\d{2,5}){0,4}"  # (089) 123 4567
    r")(?![\w-]|[.,]\d)")
_NANP_SHAPE = re.compile(r"(?:1[ -])?(?:\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}|\d{3}([.-])\d{3}\1\d{4})")
# National numbers (leading 0) are read as British ones, or as any of these countries' after a
# word like "Tel." or "phone": without a country code, digit groups are too often just numbers.
NATIONAL_REGIONS = ("GB", "DE", "FR", "NL", "BE", "CH", "AT", "IT", "IE", "SE", "AU", "IN")
_PHONE_WORD = re.compile(r"(?i)\b(?:tel|telefon|phone|fon|fax|call|mobile?|cell|ring)\b")


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of card numbers."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """An IBAN (spaces allowed) of its country's length whose mod-97 checksum holds (ISO 13616)."""
    iban = iban.replace(" ", "").upper()
    if _IBAN_LENGTH.get(iban[:2]) != len(iban) or not iban.isalnum():
        return False
    return int("".join(str(int(ch, 36)) for ch in iban[4:] + iban[:4])) % 97 == 1


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
    digits = _NON_DIGIT.sub("", text)
    seps = set(text) - set(digits)  # the match holds digits, " " and "-"
    # one kind of separator, and a first group of 4 as on every card
    if len(seps) > 1 or not 13 <= len(digits) <= 19 or seps and not _CARD_FIRST_GROUP.match(text):
        return None
    if _card_issuer(digits) and luhn_valid(digits):
        return "[CREDIT_CARD]"
    return None


def _iban(match: re.Match) -> str | None:
    """[IBAN] for a valid IBAN; a trailing group that belongs to the next word is kept."""
    text = match.group(0)
    want = _IBAN_LENGTH.get(text[:2])
    if want is None:
        return None
    end, seen = 0, 0
    while seen < want and end < len(text):
        seen += text[end] != " "
        end += 1
    if seen < want or (end < len(text) and text[end] != " ") or not iban_valid(text[:end]):
        return None
    return "[IBAN]" + text[end:]


def _phone_number(text: str, region: str | None, valid: bool = True) -> bool:
    """Whether phonenumbers reads `text` as a valid (or, with valid=False, possible) number."""
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(number) if valid else phonenumbers.is_possible_number(number)


def _phone(match: re.Match) -> str | None:
    """[PHONE] for a number valid in its numbering plan (phonenumbers' leniency VALID), with
    these exceptions: a `+` number written in groups (`+44 7700 900123`) needs only the length of
    its country's numbers, since fictional and newly allocated ranges are not in the plans and
    digit groups after a `+` are rarely anything else; US punctuation formats (`(555) 123-4567`)
    are distinctive as they are; national numbers (leading 0) are read in `NATIONAL_REGIONS`.
    """
    text = match.group(0)
    digits = sum(ch.isdigit() for ch in text)
    if not 9 <= digits <= 15:
        return None
    if text[0] == "+" or text[:2] == "(+":
        grouped = digits + 1 < len(text)
        return "[PHONE]" if _phone_number(text, None, valid=not grouped) else None
    if _NANP_SHAPE.fullmatch(text):
        return "[PHONE]" if digits == 10 + (text[0] == "1") else None
    if text.lstrip("(")[0] != "0":
        return "[PHONE]" if _phone_number(text, "US") else None
    before = match.string[max(0, match.start() - 24):match.start()]
    regions = NATIONAL_REGIONS if _PHONE_WORD.search(before) else ("GB",)
    return "[PHONE]" if any(_phone_number(text, r) for r in regions) else None


def ssn_valid(ssn: str) -> bool:
    """A US SSN of a range ever issued: not area 000, 666 or 9xx, group 00 or serial 0000."""
    digits = _NON_DIGIT.sub("", ssn)
    return (len(digits) == 9 and digits[:3] not in ("000", "666") and digits[0] != "9"
            and digits[3:5] != "00" and digits[5:] != "0000")


def _ssn(match: re.Match) -> str | None:
    return "[SSN]" if ssn_valid(match.group(0)) else None


def _ssn_labelled(match: re.Match) -> str | None:
    return f"{match.group(1)}{match.group(2)}[SSN]" if ssn_valid(match.group(3)) else None


def _ipv4(match: re.Match) -> str | None:
    """An address, unless it is a version or identifies no host (loopback, 0.0.0.0, netmasks)."""
    text = match.group(0)
    if text.startswith(("127.", "0.", "255.")):
        return None
    if _VERSION_BEFORE.search(match.string, max(0, match.start() - 12), match.start()):
        return None
    return "[IP]"


def _ipv6(match: re.Match) -> str | None:
    text = match.group(0)
    groups = [g for g in text.split(":") if g]
    # "12:30:45" is a time, not an address: ask for a "::" or 8 groups and hex or 3+ groups
    if ("::" not in text and len(groups) < 8) or len(groups) < 2 and text != "::1":
        return None
    if not re.search(r"[a-fA-F]", text) and len(groups) < 3:
        return None
    return "[IP]"


def _placeholder(value: str) -> bool:
    """A stand-in for a secret in documentation: `hf_...`, `<token>`, `${PASS}`, `my-secret-key`."""
    if _PLACEHOLDER.search(value) or _PLACEHOLDER_NAME.fullmatch(value):
        return True
    words = _PLACEHOLDER_SPLIT.split(value.lower())
    return "".join(words).isalpha() and any(w in _PLACEHOLDER_WORDS for w in words)


def _assigned_secret(match: re.Match) -> str | None:
    """[SECRET] for a literal value; None for code (a call, subscript, variable) or a placeholder.

    A quoted value is a literal, and so is any value of an environment-style line
    (`DB_PASSWORD=...`), a URL query (`?api_key=...`) or a command-line option (`--password=...`,
    `ftp-password=...`: no Python name has a "-"). Otherwise an unquoted value is code when it is
    a name (`os.environ`, `aws_secret_access_key`, `Optional`) or holds brackets; a name-shaped
    value still counts as a secret when it mixes letters and digits without `_` or `.`
    (`hunter22`).
    """
    name, sep, quote, quoted, bare = match.groups()
    if quote:
        if _placeholder(quoted):
            return None
        return f"{name}{sep}{quote}[SECRET]{quote}"
    if bare[0] in "[(:" or bare.endswith(":") or "://" in bare or _placeholder(bare):
        return None
    if sep == "=" and (name.isupper() or match.string[match.start() - 1:match.start()] in ("?", "&", "-")):
        return f"{name}{sep}[SECRET]"
    end = match.end()
    if _BRACKET.search(bare) or end < len(match.string) and match.string[end] in "([":
        return None
    if _NAME.fullmatch(bare):
        if "_" in bare or "." in bare or bare.isalpha() or bare[1:].isdigit():
            return None
    elif _NUMBER.fullmatch(bare):
        return None
    return f"{name}{sep}[SECRET]"


def _aws_secret(match: re.Match) -> str | None:
    """[SECRET] for a key that mixes upper and lower case (not a hex digest)."""
    key = match.group(2)
    if any(c.isupper() for c in key) and any(c.islower() for c in key):
        return match.group(1) + "[SECRET]"
    return None


def _url_credentials(match: re.Match) -> str | None:
    """user:password@ unless the password is a placeholder (`user:pass@`, `<user>:<password>@`)."""
    password = urllib.parse.unquote(match.group(2))
    if len(password) < 4 or _placeholder(password):
        return None
    return f"{match.group(1)}[CREDENTIALS]@"


def _email(match: re.Match) -> str | None:
    # `git@github.com:owner/repo` is an SSH remote, not somebody's address
    if match.group(0).startswith("git@"):
        return None
    # `ssh://user@host`, `https://user:pass@host`: a URL's login (placeholders that
    # `_url_credentials` left)
    if _URL_LOGIN_BEFORE.search(match.string, max(0, match.start() - 100), match.start()):
        return None
    return "[EMAIL]"


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
        if any(prefix in text for prefix in _SECRET_PREFIXES):
            text = sub(_SECRET, "secret", text, "[SECRET]")
        text = sub(_AWS_SECRET, "secret", text, _aws_secret)
        if _SECRET_SEP.search(text):
            text = sub(_ASSIGNED_SECRET, "secret", text, _assigned_secret)
    if "url_credentials" in types and "://" in text:
        text = sub(_URL_CREDENTIALS, "url_credentials", text, _url_credentials)
    if "email" in types and "@" in text:
        text = sub(_EMAIL, "email", text, _email)
    if "iban" in types:
        text = sub(_IBAN, "iban", text, _iban)
    if "credit_card" in types:
        text = sub(_CARD, "credit_card", text, _card)
    if "ssn" in types:
        text = sub(_SSN, "ssn", text, _ssn)
        lower = text.lower()
        if "ssn" in lower or "social security" in lower:
            text = sub(_SSN_LABELLED, "ssn", text, _ssn_labelled)
    if "ip" in types:
        if _DOTTED_QUAD.search(text):
            text = sub(_IPV4, "ip", text, _ipv4)
        if _IPV6_HINT.search(text):
            text = sub(_IPV6, "ip", text, _ipv6)
    if "phone" in types:
        text = sub(_PHONE, "phone", text, _phone)
    return text, counts
