"""Dockerfile parsing, as BuildKit's frontend parser (moby/buildkit frontend/dockerfile/parser) reads it.

Written here rather than taken from PyPI: the one maintained package (``dockerfile``, a binding of
the Go parser) reports some errors without their line, and every error here must name its line.

What is read, in Docker's order:

1. Parser directives: ``# escape=``` , ``# syntax=...``, ``# check=...`` in the leading block of
   comment lines (the first other line ends the block; unknown directives are comments).
2. Logical lines: a line ending with the escape character (trailing blanks allowed) continues on
   the next; comment lines and empty lines inside a continuation are skipped. The first physical
   line of an instruction has its leading blanks removed, continuation lines are kept as written.
3. Heredocs (``RUN <<EOF``, ``<<-EOF`` strips leading tabs, ``<<"EOF"`` does not expand) for RUN,
   COPY and ADD: the lines after the instruction up to the delimiter, read raw.
4. Flags (``--from=x``) at the start of the arguments, then each instruction's own form: JSON
   (``["a", "b"]``) or shell form, ``key=value`` pairs (ENV, LABEL, ARG), ``FROM image AS name``.

Variable substitution (``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR:+alt}``...) is done at
build time, per instruction, by ``expand`` and ``expand_words`` (BuildKit's shell.Lex). Every error
is a ``DockerfileError`` whose message starts with ``Dockerfile:<line>: ``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from runtime.errors import InvalidArgument

__all__ = [
    "Dockerfile",
    "DockerfileError",
    "Heredoc",
    "Instruction",
    "Stage",
    "expand",
    "expand_words",
    "parse",
    "parse_instruction",
]

INSTRUCTIONS = (
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
)
# The instructions whose arguments Docker expands with the build's variables.
SUBSTITUTED = frozenset({"ADD", "COPY", "ENV", "EXPOSE", "FROM", "LABEL", "STOPSIGNAL", "USER",
                         "VOLUME", "WORKDIR", "ARG"})
HEREDOC_INSTRUCTIONS = frozenset({"RUN", "COPY", "ADD"})
JSON_FORM = frozenset({"CMD", "ENTRYPOINT", "RUN", "SHELL", "COPY", "ADD", "VOLUME"})
ALLOWED_FLAGS = {
    "FROM": {"platform"},
    "RUN": {"mount", "network", "security"},
    "COPY": {"from", "chown", "chmod", "link", "parents", "exclude"},
    "ADD": {"chown", "chmod", "link", "checksum", "keep-git-dir", "exclude"},
    "HEALTHCHECK": {"interval", "timeout", "start-period", "start-interval", "retries"},
}
KNOWN_DIRECTIVES = ("escape", "syntax", "check")
MAX_DOCKERFILE_SIZE = 4 * 1024 * 1024

_DIRECTIVE_RE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_HEREDOC_RE = re.compile(r"<<(-?)\s*(?:([\"'])([A-Za-z0-9_.-]+)\2|([A-Za-z0-9_.-]+))")
_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_STAGE_NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]*$")


class DockerfileError(InvalidArgument):
    """A Dockerfile that cannot be parsed or built; ``line`` is where (0 when it is no one line)."""

    def __init__(self, message: str, line: int = 0, filename: str = "Dockerfile"):
        self.line = line
        self.filename = filename
        self.reason = message
        super().__init__(f"{filename}:{line}: {message}" if line else message)


@dataclass
class Heredoc:
    name: str
    content: str
    # False for a quoted delimiter (<<"EOF"): the content is taken literally.
    expand: bool = True
    chomp: bool = False


@dataclass
class Instruction:
    """One instruction. ``cmd`` is upper case; ``original`` the logical line as written (joined)."""

    cmd: str
    original: str
    line: int
    end_line: int
    # The raw text after the instruction word and its flags.
    rest: str = ""
    flags: dict[str, list[str]] = field(default_factory=dict)
    # Parsed arguments: for JSON form the list; for shell form of RUN/CMD/ENTRYPOINT one string;
    # for ENV/LABEL/ARG alternating [key, value, ...] (values raw, quotes kept, expanded later).
    args: list[str] = field(default_factory=list)
    json: bool = False
    heredocs: list[Heredoc] = field(default_factory=list)
    # ONBUILD's trigger.
    sub: "Instruction | None" = None

    def flag(self, name: str, default: str | None = None) -> str | None:
        values = self.flags.get(name)
        return values[-1] if values else default


@dataclass
class Stage:
    name: str
    base: str
    platform: str
    line: int
    index: int
    instructions: list[Instruction] = field(default_factory=list)
    from_instruction: Instruction | None = None


@dataclass
class Dockerfile:
    directives: dict[str, str]
    escape: str
    # ARG instructions before the first FROM.
    meta_args: list[Instruction]
    stages: list[Stage]
    filename: str = "Dockerfile"


#
# Lines
#


def parse(source: str | bytes, filename: str = "Dockerfile") -> Dockerfile:
    """Parse a whole Dockerfile into its stages. DockerfileError names the line of any error."""
    if isinstance(source, bytes):
        if len(source) > MAX_DOCKERFILE_SIZE:
            raise DockerfileError(f"the Dockerfile is over {MAX_DOCKERFILE_SIZE} bytes", filename=filename)
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DockerfileError(f"the Dockerfile is not UTF-8: {exc}", filename=filename) from None
    source = source.removeprefix("\ufeff")
    lines = source.split("\n")
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    if lines and lines[-1] == "":
        lines.pop()

    directives, start = _directives(lines, filename)
    escape = directives.get("escape", "\\")
    instructions = list(_instructions(lines, start, escape, filename))
    if not instructions:
        raise DockerfileError("file with no instructions", filename=filename)

    meta_args: list[Instruction] = []
    stages: list[Stage] = []
    for ins in instructions:
        if ins.cmd == "FROM":
            stages.append(_stage(ins, len(stages), filename))
        elif not stages:
            if ins.cmd != "ARG":
                raise DockerfileError("no build stage in current context", ins.line, filename)
            meta_args.append(ins)
        else:
            stages[-1].instructions.append(ins)
    if not stages:
        raise DockerfileError("no build stage in current context", instructions[-1].line, filename)
    names = set()
    for stage in stages:
        if stage.name:
            if stage.name in names:
                raise DockerfileError(f"duplicate stage name {stage.name!r}", stage.line, filename)
            names.add(stage.name)
    return Dockerfile(directives=directives, escape=escape, meta_args=meta_args, stages=stages, filename=filename)


def _directives(lines: list[str], filename: str) -> tuple[dict[str, str], int]:
    found: dict[str, str] = {}
    index = 0
    for index, line in enumerate(lines):
        match = _DIRECTIVE_RE.match(line.strip())
        if not match:
            return found, index
        key, value = match.group(1).lower(), match.group(2)
        if key not in KNOWN_DIRECTIVES:
            continue  # An unknown directive is a comment, and the block goes on.
        if key in found:
            raise DockerfileError(f"only one {key} parser directive can be used", index + 1, filename)
        if key == "escape" and value not in ("\\", "`"):
            raise DockerfileError(f"invalid escape token '{value}' does not match ` or \\", index + 1, filename)
        found[key] = value
    return found, len(lines)


def _instructions(lines: list[str], start: int, escape: str, filename: str):
    """Yield the instructions of ``lines[start:]``."""
    continuation = re.compile(re.escape(escape) + r"[ \t]*$")
    i = start
    n = len(lines)
    while i < n:
        raw = lines[i]
        stripped = raw.lstrip(" \t")
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        first = i + 1
        text = stripped
        ends = continuation.search(text)
        i += 1
        while ends:
            text = text[:ends.start()]
            # The next line that is neither a comment nor empty continues this one.
            while i < n and (not lines[i].strip() or lines[i].lstrip(" \t").startswith("#")):
                i += 1
            if i >= n:
                break
            piece = lines[i]
            i += 1
            ends = continuation.search(piece)
            text += piece
        end = i
        ins = parse_instruction(text, first, end, escape, filename)
        if ins.cmd in HEREDOC_INSTRUCTIONS and not ins.json:
            markers = [(m.group(1) == "-", bool(m.group(2)), m.group(3) or m.group(4))
                       for m in _HEREDOC_RE.finditer(ins.rest)]
            for chomp, quoted, name in markers:
                body = []
                while True:
                    if i >= n:
                        raise DockerfileError(f"unterminated heredoc {name}", first, filename)
                    line = lines[i]
                    i += 1
                    check = line.lstrip("\t") if chomp else line
                    if check == name:
                        break
                    body.append(check)
                content = "".join(b + "\n" for b in body)
                ins.heredocs.append(Heredoc(name=name, content=content, expand=not quoted, chomp=chomp))
            if markers:
                ins.end_line = i
                ins.original = text + "\n" + "".join(
                    h.content + h.name + "\n" for h in ins.heredocs)
        yield ins


#
# One instruction
#


def parse_instruction(text: str, line: int = 0, end_line: int | None = None, escape: str = "\\",
                      filename: str = "Dockerfile", onbuild: bool = False) -> Instruction:
    """Parse one logical line (an ONBUILD trigger too) into an Instruction."""
    text = text.strip()
    match = re.match(r"(\S+)\s*(.*)", text, re.S)
    word, rest = (match.group(1), match.group(2).strip()) if match else ("", "")
    cmd = word.upper()
    if cmd not in INSTRUCTIONS:
        raise DockerfileError(f"unknown instruction: {word}", line, filename)
    ins = Instruction(cmd=cmd, original=text, line=line, end_line=end_line or line)
    if cmd == "ONBUILD":
        if not rest:
            raise DockerfileError("ONBUILD requires at least one argument", line, filename)
        sub_word = rest.split(None, 1)[0].upper()
        if sub_word in ("ONBUILD", "FROM", "MAINTAINER"):
            raise DockerfileError(f"{sub_word} isn't allowed as an ONBUILD trigger", line, filename)
        ins.sub = parse_instruction(rest, line, end_line, escape, filename, onbuild=True)
        ins.rest = rest
        ins.args = [rest]
        return ins
    flags, rest = _flags(rest, cmd, line, filename)
    ins.flags, ins.rest = flags, rest
    ins.args, ins.json = _arguments(cmd, rest, line, escape, filename)
    return ins


def _flags(rest: str, cmd: str, line: int, filename: str) -> tuple[dict[str, list[str]], str]:
    flags: dict[str, list[str]] = {}
    while rest.startswith("--"):
        word, _, after = rest.partition(" ")
        if "\t" in word:
            word, _, more = word.partition("\t")
            after = more + " " + after
        rest = after.lstrip()
        if word == "--":
            break
        name, eq, value = word[2:].partition("=")
        allowed = ALLOWED_FLAGS.get(cmd, set())
        if name not in allowed:
            raise DockerfileError(f"unknown flag: --{name}", line, filename)
        if not eq and name not in ("link", "parents", "keep-git-dir"):
            raise DockerfileError(f"missing a value on flag: --{name}", line, filename)
        flags.setdefault(name, []).append(_unquote_flag(value) if eq else "true")
    return flags, rest


def _unquote_flag(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _maybe_json(rest: str) -> list[str] | None:
    if not rest.startswith("["):
        return None
    try:
        value = json.loads(rest)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _arguments(cmd: str, rest: str, line: int, escape: str, filename: str) -> tuple[list[str], bool]:
    def need(condition: bool, message: str) -> None:
        if not condition:
            raise DockerfileError(message, line, filename)

    if cmd in ("ENV", "LABEL"):
        need(bool(rest), f"{cmd} requires at least one argument")
        return _name_values(cmd, rest, line, escape, filename), False
    if cmd == "ARG":
        need(bool(rest), "ARG requires exactly one argument")
        words = _split_words(rest, escape)
        out = []
        for word in words:
            name, eq, value = word.partition("=")
            need(bool(_NAME_RE.match(name)), f"invalid ARG name {name!r}")
            out += [name, value if eq else None]
        return out, False
    if cmd in JSON_FORM:
        values = _maybe_json(rest)
        if values is not None:
            if cmd in ("COPY", "ADD"):
                need(len(values) >= 2, f"{cmd} requires at least two arguments")
            return values, True
        if cmd == "SHELL":
            raise DockerfileError("SHELL requires the arguments to be in JSON form", line, filename)
    if cmd in ("RUN", "CMD", "ENTRYPOINT"):
        need(bool(rest) or cmd != "RUN", f"{cmd} requires at least one argument")
        return ([rest] if rest else []), False
    if cmd in ("COPY", "ADD"):
        words = rest.split()
        need(len(words) >= 2, f"{cmd} requires at least two arguments, but only one was provided. Destination could not be determined")
        return words, False
    if cmd == "FROM":
        words = rest.split()
        need(len(words) in (1, 3) and (len(words) == 1 or words[1].lower() == "as"),
             "FROM requires either one or three arguments")
        return words, False
    if cmd == "HEALTHCHECK":
        words = rest.split(None, 1)
        need(bool(words), "HEALTHCHECK requires at least one argument")
        kind = words[0].upper()
        if kind == "NONE":
            need(len(words) == 1, "HEALTHCHECK NONE takes no arguments")
            return ["NONE"], False
        need(kind == "CMD" and len(words) == 2, "Unknown type for HEALTHCHECK, or no command: " + words[0])
        values = _maybe_json(words[1])
        if values is not None:
            return ["CMD", *values], True
        return ["CMD", words[1]], False
    if cmd in ("WORKDIR", "USER", "STOPSIGNAL", "MAINTAINER"):
        need(bool(rest), f"{cmd} requires exactly one argument")
        if cmd in ("USER", "STOPSIGNAL"):
            need(len(rest.split()) == 1, f"{cmd} requires exactly one argument")
        return [rest], False
    if cmd in ("EXPOSE", "VOLUME"):
        need(bool(rest), f"{cmd} requires at least one argument")
        return rest.split(), False
    return [rest], False


def _split_words(text: str, escape: str) -> list[str]:
    """Split on blanks outside quotes, keeping quotes and escapes (BuildKit's parseWords)."""
    words, word, quote, escaped = [], "", None, False
    for ch in text:
        if escaped:
            word += ch
            escaped = False
            continue
        if ch == escape:
            escaped = True
            word += ch
            continue
        if quote:
            if ch == quote:
                quote = None
            word += ch
            continue
        if ch in "\"'":
            quote = ch
            word += ch
            continue
        if ch in " \t":
            if word:
                words.append(word)
                word = ""
            continue
        word += ch
    if word:
        words.append(word)
    return words


def _name_values(cmd: str, rest: str, line: int, escape: str, filename: str) -> list[str]:
    words = _split_words(rest, escape)
    if words and "=" not in words[0]:
        # The legacy form: ENV key value with spaces.
        key, _, value = rest.partition(" ") if " " in rest else rest.partition("\t")
        value = value.strip()
        if not value:
            raise DockerfileError(f"{cmd} names can not be blank" if not key else f"{cmd} must have two arguments", line, filename)
        return [key, value]
    out = []
    for word in words:
        key, eq, value = word.partition("=")
        if not eq:
            raise DockerfileError(f"Syntax error - can't find = in \"{word}\". Must be of the form: name=value", line, filename)
        if not key:
            raise DockerfileError(f"{cmd} names can not be blank", line, filename)
        out += [key, value]
    return out


def _stage(ins: Instruction, index: int, filename: str) -> Stage:
    words = ins.args
    name = ""
    if len(words) == 3:
        name = words[2].lower()
        if not _STAGE_NAME_RE.match(name):
            raise DockerfileError(f"invalid name for build stage: {words[2]!r}, name can't start with a number or contain symbols", ins.line, filename)
    return Stage(name=name, base=words[0], platform=ins.flag("platform") or "", line=ins.line, index=index,
                 from_instruction=ins)


#
# Variable substitution (BuildKit's shell.Lex)
#


class _Lexer:
    def __init__(self, text: str, env: dict[str, str], escape: str, line: int, filename: str):
        self.text = text
        self.pos = 0
        self.env = env
        self.escape = escape
        self.line = line
        self.filename = filename
        self.used: set[str] = set()

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def next(self) -> str:
        ch = self.peek()
        self.pos += 1
        return ch

    def error(self, message: str):
        raise DockerfileError(message, self.line, self.filename)

    def words(self, split: bool) -> list[str]:
        """Process the whole text; with ``split``, into words on unquoted blanks."""
        words: list[str] = []
        word = ""
        started = False
        while self.pos < len(self.text):
            ch = self.peek()
            if split and ch in " \t":
                self.pos += 1
                if started:
                    words.append(word)
                    word, started = "", False
                continue
            started = True
            if ch == "'":
                self.pos += 1
                word += self.single_quoted()
            elif ch == '"':
                self.pos += 1
                word += self.double_quoted()
            elif ch == "$":
                value = self.dollar()
                if not split:
                    word += value
                    continue
                # An unquoted variable's value is split into words too (BuildKit's addString).
                for c in value:
                    if c in " \t\n":
                        if started and word:
                            words.append(word)
                        word, started = "", False
                    else:
                        word += c
                        started = True
            elif ch == self.escape:
                self.pos += 1
                if self.pos < len(self.text):
                    word += self.next()
                # A trailing escape is dropped, as BuildKit does.
            else:
                self.pos += 1
                word += ch
        if started:
            words.append(word)
        return words

    def single_quoted(self) -> str:
        out = ""
        while True:
            if self.pos >= len(self.text):
                self.error("unexpected end of statement while looking for matching single-quote")
            ch = self.next()
            if ch == "'":
                return out
            out += ch

    def double_quoted(self) -> str:
        out = ""
        while True:
            if self.pos >= len(self.text):
                self.error("unexpected end of statement while looking for matching double-quote")
            ch = self.peek()
            if ch == '"':
                self.pos += 1
                return out
            if ch == "$":
                out += self.dollar()
                continue
            self.pos += 1
            if ch == self.escape and self.pos < len(self.text):
                following = self.peek()
                if following in ('"', "$", self.escape):
                    out += self.next()
                    continue
            out += ch

    def name(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and (self.text[self.pos].isalnum() or self.text[self.pos] == "_"):
            self.pos += 1
        return self.text[start:self.pos]

    def lookup(self, name: str) -> str | None:
        self.used.add(name)
        return self.env.get(name)

    def dollar(self) -> str:
        self.pos += 1  # The "$".
        ch = self.peek()
        if ch == "{":
            self.pos += 1
            name = self.name()
            if not name:
                self.error("bad substitution: missing variable name")
            op = self.peek()
            if op == "}":
                self.pos += 1
                return self.lookup(name) or ""
            if op == ":":
                self.pos += 1
                op = ":" + self.next()
            else:
                self.pos += 1
            if op not in (":-", "-", ":+", "+", ":?", "?"):
                self.error(f"unsupported modifier ({op}) in substitution")
            word = self.braced_word()
            value = self.lookup(name)
            colon = op.startswith(":")
            is_set = value is not None and (value != "" or not colon)
            kind = op[-1]
            if kind == "-":
                return value if is_set else word
            if kind == "+":
                return word if is_set else ""
            if not is_set:
                self.error(f"{name}: {word or 'is not allowed to be unset'}")
            return value
        name = self.name()
        if not name:
            return "$"
        return self.lookup(name) or ""

    def braced_word(self) -> str:
        """The word of ``${name:-word}`` up to the matching "}", itself expanded."""
        out = ""
        while True:
            if self.pos >= len(self.text):
                self.error("syntax error: missing '}'")
            ch = self.peek()
            if ch == "}":
                self.pos += 1
                return out
            if ch == "$":
                out += self.dollar()
            elif ch == "'":
                self.pos += 1
                out += self.single_quoted()
            elif ch == '"':
                self.pos += 1
                out += self.double_quoted()
            elif ch == self.escape:
                self.pos += 1
                if self.pos < len(self.text):
                    out += self.next()
            else:
                self.pos += 1
                out += ch


def expand(word: str, env: dict[str, str], escape: str = "\\", *, line: int = 0,
           filename: str = "Dockerfile", used: set | None = None) -> str:
    """Expand variables in ``word`` and remove its quotes and escapes (ProcessWord)."""
    lexer = _Lexer(word, env, escape, line, filename)
    words = lexer.words(split=False)
    if used is not None:
        used |= lexer.used
    return words[0] if words else ""


def expand_words(text: str, env: dict[str, str], escape: str = "\\", *, line: int = 0,
                 filename: str = "Dockerfile", used: set | None = None) -> list[str]:
    """Expand variables and split into words on unquoted blanks (ProcessWords)."""
    lexer = _Lexer(text, env, escape, line, filename)
    words = lexer.words(split=True)
    if used is not None:
        used |= lexer.used
    return words
