"""Attack-pattern rules and the scanner that applies them (no I/O; the middleware feeds it).

Four families, each a handful of compiled expressions: SQL injection, cross-site scripting,
command injection and path traversal. The expressions look for *syntax* an attack needs (a
quote that closes a string and then a tautology, a tag with an event handler, a shell
separator followed by a command and its arguments, ``../``), not for words: management
fields legitimately say "select", "drop", "script" or "curl", and must keep working.

Values are normalised before matching: percent-decoding (twice, to see through double
encoding), Unicode NFKC (full-width look-alikes become ASCII) and lower case.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote, unquote_plus

# Runs of whitespace or inline SQL comments (``UNION/**/SELECT``).
_S = r"(?:\s|\+|/\*.*?\*/)"
_SHELL_COMMANDS = (
    r"(?:cat|ls|id|whoami|uname|pwd|wget|curl|nc|ncat|netcat|bash|sh|zsh|dash|python[23]?|"
    r"perl|ruby|php|rm|chmod|chown|echo|ping|nslookup|dig|telnet|ssh|scp|tftp|powershell|"
    r"cmd(?:\.exe)?|certutil|base64|busybox|sleep|kill|mkfifo|printenv|hostname|ifconfig|"
    r"ipconfig|net|tasklist|type|dir|sudo|su|crontab|xterm)"
)
# Commands that are not also everyday words: alone after a separator they are still a probe.
_UNAMBIGUOUS_COMMANDS = (
    r"(?:whoami|uname|ifconfig|ipconfig|printenv|tasklist|hostname|"
    r"net\s+(?:user|localgroup|view|share))"
)
# What follows a command in an injection: an option, a path, a variable, an address, a URL,
# a quoted argument or a bare number (``sleep 5``).
_NETWORK_COMMANDS = r"(?:ping|nslookup|dig|wget|curl|nc|ncat|telnet|ssh)"
_SHELL_ARGUMENTS = (
    r"\s+(?:-{1,2}[a-z0-9]|/|~|\$|\.{1,2}/|[a-z]:\\|\d{1,3}(?:\.\d{1,3}){3}|https?:|['\"`]|"
    r"\d+\s*(?:$|[;&|#]))"
)
_EVENT_HANDLERS = (
    r"on(?:error|load|click|dblclick|mouse\w+|focus\w*|blur|key\w+|change|submit|input|"
    r"toggle|begin|end|animation\w+|transition\w+|pointer\w+|touch\w+|drag\w*|drop|wheel|"
    r"scroll|copy|paste|cut|abort|resize|select|show|start|message|hashchange|pageshow|"
    r"unload|beforeunload|auxclick|contextmenu|play|pause|ended|canplay\w*|readystatechange|"
    r"invalid|search|popstate|storage)"
)


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    category: str
    pattern: re.Pattern[str]
    description: str


def _rule(rule_id: str, description: str, pattern: str) -> Rule:
    category = rule_id.split(".", 1)[0]
    return Rule(rule_id, category, re.compile(pattern, re.IGNORECASE | re.DOTALL), description)


RULES: tuple[Rule, ...] = (
    # -- SQL injection ------------------------------------------------------------------------
    _rule(
        "sqli.tautology",
        "a closed string followed by an always-true comparison (' or 1=1, ' or 'a'='a)",
        rf"['\")]{_S}*(?:or\b|\|\||xor\b){_S}*\(?{_S}*(['\"]?)(\w+)\1{_S}*(?:=|like){_S}*\(?{_S}*"
        rf"\1\2(?!\w)|['\")]{_S}*(?:or|\|\|){_S}+(?:true|not{_S}+false)\b{_S}*(?:--|#|/\*|;|$)|"
        rf"['\")]{_S}*or{_S}+(?:''|\"\"){_S}*={_S}*['\"]|"
        rf"['\")]{_S}*or{_S}+\w+{_S}+like{_S}+['\"]%",
    ),
    _rule(
        "sqli.numeric_tautology",
        "a numeric always-true or always-false condition (1 or 1=1, ' and 1=2)",
        rf"(?:\b\d+|['\")]){_S}*(?:or|and|having){_S}+(\d+){_S}*(?:=|<>|!=|<|>){_S}*\d+\b|"
        rf"['\")]{_S}*(?:and|or){_S}+(['\"])\w{{0,3}}\2{_S}*(?:=|<>|!=|like){_S}*\2",
    ),
    _rule(
        "sqli.comment_truncation",
        "a closed string followed by a comment that cuts off the rest of the query (admin'--)",
        rf"'{_S}*\)*{_S}*(?:;{_S}*)?(?:(?:--|#)[\s-]*$|/\*)",
    ),
    _rule(
        "sqli.union_select",
        "UNION SELECT with a column list",
        rf"\bunion(?:{_S}+(?:all|distinct))?{_S}+\(?{_S}*select{_S}+"
        r"(?:null\b|\d|@@|\*|'|\"|char\s*\(|concat|version\s*\(|user\s*\(|database\s*\(|"
        r"group_concat|table_name|column_name|[\w.`\"]+\s*(?:,|\bfrom\b))",
    ),
    _rule(
        "sqli.stacked_query",
        "a statement separator followed by a destructive or data-reading statement",
        rf";{_S}*(?:drop{_S}+(?:table|database|schema|user|view|index)\b|"
        rf"delete{_S}+from\b|insert{_S}+into\b|update{_S}+[\w.`\"]+{_S}+set\b|"
        rf"truncate{_S}+(?:table{_S}+)?[\w.`\"]+{_S}*(?:$|;|--)|alter{_S}+table\b|"
        rf"create{_S}+(?:table|user|function|trigger)\b|"
        rf"(?:exec|execute){_S}+(?:xp_|sp_|master\.|\()|shutdown{_S}*(?:$|;|--)|"
        rf"declare{_S}+@|grant{_S}+\w+{_S}+on\b)"
        rf"|['\"\d)]{_S}*;{_S}*select\b",
    ),
    _rule(
        "sqli.subquery",
        "a closed string followed by a boolean operator and a sub-select (blind extraction)",
        rf"['\")]{_S}*(?:and|or|having|where)\b{_S}*(?:not{_S}+)?(?:exists{_S}*)?"
        rf"(?:\(|\w+{_S}*\(){{1,4}}{_S}*select\b",
    ),
    _rule(
        "sqli.time_based",
        "a delay function used to probe for blind injection",
        r"\b(?:sleep|pg_sleep)\s*\(\s*['\"]?\d|\bbenchmark\s*\(\s*\d+\s*,|"
        r"\bwaitfor\s+(?:delay|time)\s+'|dbms_pipe\.receive_message|dbms_lock\.sleep|"
        r"randomblob\s*\(\s*\d{6,}",
    ),
    _rule(
        "sqli.order_by_probe",
        "ORDER BY/GROUP BY a column number right after a closed string (column counting)",
        rf"['\")]{_S}*(?:order|group){_S}+by{_S}+\d+",
    ),
    _rule(
        "sqli.dangerous_function",
        "database functions and catalogs used to read files, run commands or map the schema",
        r"\bxp_cmdshell\b|\bload_file\s*\(|\binto\s+(?:out|dump)file\b|"
        r"\binformation_schema\s*\.\s*(?:tables|columns|schemata)\b|\bsqlite_master\b|"
        r"\bpg_catalog\s*\.\s*pg_\w+|@@version\b|\bextractvalue\s*\(|\bupdatexml\s*\(|"
        r"\butl_(?:http|inaddr)\s*\.|\bpg_read_file\s*\(|\bcopy\s+\w+\s+(?:from|to)\s+program\b",
    ),
    # -- Cross-site scripting -----------------------------------------------------------------
    _rule("xss.script_tag", "a <script> element", r"<\s*/?\s*script\b"),
    _rule(
        "xss.event_handler",
        "an HTML event-handler attribute (onerror=, onload=, ...)",
        rf"<[a-z!/][^>]*?[\s/\"'`]{_EVENT_HANDLERS}\s*=|"
        rf"['\"`]\s*[\s/]*{_EVENT_HANDLERS}\s*=\s*['\"`]?[\w(]",
    ),
    _rule(
        "xss.script_uri",
        "a javascript:/vbscript: URI",
        r"(?:^|[\s\"'=(<`])\s*(?:java|vb|live)\s*script\s*:(?=\S)|"
        r"\bdata\s*:\s*(?:text/html|image/svg\+xml|application/(?:x-)?javascript)",
    ),
    _rule(
        "xss.dangerous_tag",
        "elements that load or embed active content",
        r"<\s*(?:iframe|frame|frameset|object|embed|applet|base|meta|link|isindex|"
        r"math|svg|template|portal)\b[^<>]*(?:>|\s(?:src|href|data|content|action|xlink:href|"
        r"srcdoc|http-equiv)\s*=)",
    ),
    _rule(
        "xss.dom_sink",
        "script calls typical of injected proof-of-concept payloads",
        r"\bdocument\s*\.\s*(?:cookie|domain|write(?:ln)?)\b|\bwindow\s*\.\s*location\s*=|"
        r"\b(?:alert|confirm|prompt)\s*(?:\(|`)\s*(?:document|window|\d|['\"`/])|"
        r"\beval\s*\(\s*(?:atob|unescape|string\.fromcharcode|['\"`])|"
        r"\bstring\s*\.\s*fromcharcode\s*\(|\.innerhtml\s*=|\bsrcdoc\s*=|"
        r"\bformaction\s*=|style\s*=[^>]*expression\s*\(|-moz-binding\s*:",
    ),
    # -- Command injection --------------------------------------------------------------------
    _rule(
        "cmdi.chained_command",
        "a shell separator followed by a command and its arguments (; cat /etc/passwd)",
        # A command with arguments after any separator; an unambiguous command on its own; an
        # ambiguous one ("id", "type") on its own only at the very end after a strong separator,
        # so "Badges & ID" or a Markdown table row "| id | uuid |" stay clean.
        rf"(?:;|&&|\|\||\||&|\n|\r){_S}*{_SHELL_COMMANDS}{_SHELL_ARGUMENTS}|"
        rf"(?:;|&&|\|\||\||&|\n|\r){_S}*{_UNAMBIGUOUS_COMMANDS}\s*(?:$|;|&&|\|\||&)|"
        rf"(?:;|&&|\|\||\||\n|\r){_S}*{_SHELL_COMMANDS}\s*$|"
        rf"(?:;|&&|\|\||\||&|\n|\r){_S}*{_NETWORK_COMMANDS}\s+[\w-]+(?:\.[\w-]+)+\s*(?:$|[;&|#])|"
        r"(?:;|&&|\||\n)\s*\w+[^;&|\n]{0,60}>{1,2}\s*/(?:tmp|etc|var|dev|root|home)/",
    ),
    _rule(
        "cmdi.substitution",
        "shell command substitution ($(...), `...`) around a command",
        rf"\$\(\s*{_SHELL_COMMANDS}\b|(?:^|[^\s`]|\s[;=|&])`\s*{_SHELL_COMMANDS}\b[^`]*`|"
        r"\$\{\s*ifs\s*\}|\$ifs\b",
    ),
    _rule(
        "cmdi.shellshock",
        "a bash function definition in a value (Shellshock)",
        r"\(\s*\)\s*\{\s*[^}]*;\s*\}\s*;",
    ),
    _rule(
        "cmdi.reverse_shell",
        "reverse-shell and download-and-run idioms",
        r"/dev/(?:tcp|udp)/|\bbash\s+-i\b|\bn(?:c|cat)\b[^\n]{0,40}\s-[elc]\b|"
        r"\|\s*(?:ba|z|da)?sh\s*(?:$|[;&|])|\bmkfifo\s+/|"
        r"\bpowershell(?:\.exe)?\s+-(?:e|enc|encodedcommand|nop|w)\b",
    ),
    # -- Path traversal -----------------------------------------------------------------------
    _rule(
        "traversal.dot_segments",
        "a ../ or ..\\ path segment",
        r"(?:^|[\\/])\.\.(?:[\\/]|$)|\.\.[\\/]",
    ),
    _rule(
        "traversal.encoded",
        "percent- or overlong-UTF-8-encoded dots and slashes",
        r"%(?:25)*2e(?:%(?:25)*2e|\.)|\.%(?:25)*2e|\.\.%(?:25)*(?:2f|5c)|"
        r"%c0%(?:ae|af|2f|5c)|%c1%(?:9c|1c)|%e0%80%(?:ae|af)|%u(?:002e|2215|2216|ff0e)",
    ),
    _rule(
        "traversal.sensitive_file",
        "well-known system files",
        r"/etc/(?:passwd|shadow|group|hosts|issue|sudoers)\b|/proc/self/|/proc/\d+/environ|"
        r"\b(?:boot|win|system)\.ini\b|[a-z]:\\+windows\\|\\windows\\system32\\|"
        r"\.ssh/(?:id_\w+|authorized_keys)|\.htpasswd\b|web-inf/web\.xml",
    ),
    _rule("traversal.null_byte", "a NUL byte (truncates paths in C libraries)", r"\x00|%00"),
)

CATEGORIES = ("sqli", "xss", "cmdi", "traversal")

# A value needs at least one of these characters to match any rule; most values (names,
# numbers, ids) have none and skip the rules entirely.
_TRIGGER = re.compile(
    r"['\"`;|&$<>()=/\\%{}\x00\n\r@#*:,]|\.\.|--|union|waitfor|benchmark|sleep", re.IGNORECASE
)
_EXCERPT_LENGTH = 48
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
_TOKEN_LIKE = re.compile(r"[A-Za-z0-9_+/=-]{16,}")


@dataclass(frozen=True, slots=True)
class Finding:
    rule_id: str
    category: str
    location: str
    excerpt: str


def normalise(value: str, *, url_encoded: bool = False) -> str:
    """The forms attacks hide behind, undone: percent-encoding (twice), full-width and other
    compatibility characters, upper case."""
    text = value
    for _ in range(2):
        if "%" not in text and not (url_encoded and "+" in text):
            break
        decoded = unquote_plus(text) if url_encoded else unquote(text)
        if decoded == text:
            break
        text = decoded
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return text.lower()


def excerpt(text: str, start: int, end: int) -> str:
    """A short, printable piece of the matched text, for the audit trail (never the value).

    Long unbroken runs of token characters are cut out: should a key or token sit inside a
    match, no usable part of it reaches the audit log."""
    piece = _TOKEN_LIKE.sub("[...]", text[start : min(end, start + _EXCERPT_LENGTH)])
    return _UNPRINTABLE.sub("?", piece)


def scan_value(value: str, location: str, *, url_encoded: bool = False) -> list[Finding]:
    """Every rule ``value`` triggers (at most one finding per rule)."""
    if not value or (not _TRIGGER.search(value) and value.isascii()):
        return []
    return _scan(value, location, url_encoded)


# The path of an API route or a client's User-Agent is the same on most requests and usually
# holds a trigger character ('/'): its findings are remembered instead of running every rule
# again. The scan is a pure function of its arguments, so results do not change. Only for the
# path and the User-Agent, never bodies, query strings or other headers (a Referer may carry a
# URL with a token in it, which should not linger in memory).
_CACHED_VALUE_LENGTH = 256


def scan_request_value(value: str, location: str) -> list[Finding]:
    """:func:`scan_value` for a request path or User-Agent, remembering short values."""
    if not value or (not _TRIGGER.search(value) and value.isascii()):
        return []
    if len(value) > _CACHED_VALUE_LENGTH:
        return _scan(value, location, False)
    return list(_scan_request_value(value, location))


@functools.lru_cache(maxsize=1024)
def _scan_request_value(value: str, location: str) -> tuple[Finding, ...]:
    return tuple(_scan(value, location, False))


def _scan(value: str, location: str, url_encoded: bool) -> list[Finding]:
    lowered = value.lower()
    decoded = normalise(value, url_encoded=url_encoded)
    # The raw form keeps encodings visible (%2e%2e); the decoded form shows what they hide.
    candidates = (lowered,) if decoded == lowered else (lowered, decoded)
    findings: list[Finding] = []
    for rule in RULES:
        for text in candidates:
            match = rule.pattern.search(text)
            if match:
                findings.append(
                    Finding(rule.id, rule.category, location, excerpt(text, *match.span()))
                )
                break
    return findings
