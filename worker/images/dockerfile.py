"""The Dockerfile subset pyswarm builds: parsing, word processing and the config-only
instructions' effect on an image config (shared by the builder and ``commit --change``).

``parse`` turns the text into instructions with the line each starts on, and checks what can
be checked without variables (known keyword, argument counts, flags, JSON forms), so a typo
fails before any step runs. Variable substitution (``$V``, ``${V}``, ``${V:-d}``, ``${V:+a}``)
happens in the builder, on the instructions Docker substitutes, through ``words``/``word``.

Every error is InvalidArgument("Dockerfile:LINE: message") with the real line number.
Parser directives (``# syntax=``, ``# escape=``) are read at the top; only ``escape`` has an
effect. Multi-stage builds, ONBUILD, heredocs and RUN --mount are refused by name.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pyswarm.common.errors import InvalidArgument

# Instructions and the --flags each accepts.
FLAGS: dict[str, frozenset[str]] = {
    "FROM": frozenset({"platform"}),
    "RUN": frozenset(),
    "CMD": frozenset(),
    "ENTRYPOINT": frozenset(),
    "COPY": frozenset({"chown", "chmod", "from", "link"}),
    "ADD": frozenset({"chown", "chmod", "link"}),
    "ENV": frozenset(),
    "ARG": frozenset(),
    "WORKDIR": frozenset(),
    "USER": frozenset(),
    "EXPOSE": frozenset(),
    "LABEL": frozenset(),
    "HEALTHCHECK": frozenset({"interval", "timeout", "retries", "start-period",
                              "start-interval"}),
    "STOPSIGNAL": frozenset(),
    "VOLUME": frozenset(),
    "SHELL": frozenset(),
    "MAINTAINER": frozenset(),
}
UNSUPPORTED = {"ONBUILD": "ONBUILD is not supported"}
# Instructions whose arguments get $VAR substitution (as in Docker).
SUBSTITUTED = frozenset({"ADD", "COPY", "ENV", "EXPOSE", "FROM", "LABEL", "STOPSIGNAL",
                         "USER", "VOLUME", "WORKDIR", "ARG"})

_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9_-]*)\s*=\s*(.*?)\s*$")
_FLAG = re.compile(r"^--([a-z][a-z0-9-]*)(?:=(.*))?$")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def error(line: int, msg: str) -> InvalidArgument:
    return InvalidArgument(f"Dockerfile:{line}: {msg}")


@dataclass(frozen=True)
class Instruction:
    line: int  # 1-based line where the instruction starts
    cmd: str  # upper-case keyword
    args: str  # text after the keyword and flags, continuations joined, unsubstituted
    flags: tuple[tuple[str, str], ...] = ()

    def flag(self, name: str) -> str | None:
        return next((v for k, v in self.flags if k == name), None)

    @property
    def text(self) -> str:
        """Normalized source text: history's created_by and part of the cache key."""
        fl = "".join(f"--{k}={v} " for k, v in self.flags)
        return f"{self.cmd} {fl}{self.args}".rstrip()


def parse(text: str) -> list[Instruction]:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    escape = "\\"
    i = 0
    while i < len(lines):  # parser directives: only the leading run of `# key=value`
        m = _DIRECTIVE.match(lines[i].strip())
        if not m:
            break
        if m.group(1).lower() == "escape":
            if m.group(2) not in ("\\", "`"):
                raise error(i + 1, f"invalid escape directive {m.group(2)!r}: use \\ or `")
            escape = m.group(2)
        i += 1
    out: list[Instruction] = []
    n = len(lines)
    while i < n:
        stripped = lines[i].strip()
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        start = i + 1
        parts: list[str] = []
        line = lines[i]
        while True:
            s = line.rstrip()
            i += 1
            if not s.endswith(escape):
                parts.append(s)
                break
            parts.append(s[: -len(escape)])
            # Inside a continuation, comment and blank lines are dropped (as Docker does).
            while i < n and (not lines[i].strip() or lines[i].lstrip().startswith("#")):
                i += 1
            if i >= n:
                break
            line = lines[i]
        full = "".join(parts).strip()
        if full:  # a lone continuation character is an empty line
            out.append(_instruction(start, full))
    return out


def _instruction(line: int, full: str) -> Instruction:
    kw, rest = (full.split(None, 1) + [""])[:2]
    cmd = kw.upper()
    rest = rest.strip()
    if cmd in UNSUPPORTED:
        raise error(line, UNSUPPORTED[cmd])
    if cmd not in FLAGS:
        raise error(line, f"unknown instruction: {kw}")
    flags: list[tuple[str, str]] = []
    while rest.startswith("--"):
        word, _, after = rest.partition(" ")
        m = _FLAG.match(word)
        if not m:
            raise error(line, f"{cmd}: malformed flag {word!r}")
        name, value = m.group(1), m.group(2)
        if name not in FLAGS[cmd]:
            raise error(line, f"{cmd}: unknown flag: --{name}")
        if value is None:
            value = "true" if name == "link" else ""
        if not value:
            raise error(line, f"{cmd}: flag --{name} needs a value")
        flags.append((name, value))
        rest = after.strip()
    inst = Instruction(line, cmd, rest, tuple(flags))
    _check(inst)
    return inst


def _check(inst: Instruction) -> None:
    """What can be validated before variables are known."""
    line, cmd, args = inst.line, inst.cmd, inst.args
    if not args:
        raise error(line, f"{cmd} requires at least one argument")
    if cmd == "FROM":
        w = args.split()
        if not (len(w) == 1 or (len(w) == 3 and w[1].lower() == "as")):
            raise error(line, "FROM requires either one or three arguments (image [AS name])")
        if inst.flag("platform") not in (None, "linux/amd64"):
            raise error(line, "FROM --platform: only linux/amd64 is supported")
    elif cmd in ("COPY", "ADD"):
        if inst.flag("from") is not None:
            raise error(line, "COPY --from (multi-stage) is not supported")
        try:
            srcs = exec_form(args, line)
            if srcs is None:
                srcs = words(args, {}, line)
        except InvalidArgument:
            srcs = args.split()
        if len(srcs) < 2:
            raise error(line, f"{cmd} requires at least two arguments, but got {len(srcs)}")
        chown = inst.flag("chown")
        if chown is not None and chown.count(":") > 1:
            raise error(line, f"{cmd}: bad --chown value {chown!r}")
        chmod = inst.flag("chmod")
        if chmod is not None and not re.fullmatch(r"[0-7]{3,4}", chmod):
            raise error(line, f"{cmd}: --chmod must be octal, got {chmod!r}")
    elif cmd == "SHELL":
        sh = exec_form(args, line)
        if not sh:
            raise error(line, "SHELL requires the arguments to be in JSON form")
    elif cmd == "HEALTHCHECK":
        if args.upper() == "NONE":
            if inst.flags:
                raise error(line, "HEALTHCHECK NONE takes no options")
        else:
            kw, _, rest = args.partition(" ")
            if kw.upper() != "CMD" or not rest.strip():
                raise error(line, "HEALTHCHECK must be NONE or CMD followed by a command")
            for name in ("interval", "timeout", "start-period", "start-interval"):
                v = inst.flag(name)
                if v is not None:
                    parse_duration(v, line, name)
            r = inst.flag("retries")
            if r is not None and not (r.isdigit() and int(r) > 0):
                raise error(line, f"HEALTHCHECK --retries must be a positive integer: {r!r}")
    elif cmd == "ARG":
        name = args.split("=", 1)[0]
        if not _VAR_NAME.fullmatch(name) or " " in args.split("=", 1)[0]:
            raise error(line, f"ARG: invalid name {name!r}")
    elif cmd == "ENV" or cmd == "LABEL":
        first = args.split(None, 1)[0]
        if "=" not in first:
            if cmd == "LABEL":
                raise error(line, "LABEL requires key=value pairs")
            if len(args.split(None, 1)) < 2:
                raise error(line, "ENV must have two arguments (ENV NAME value)")
        elif first.startswith("="):
            raise error(line, f"{cmd} names can not be blank")
    elif cmd in ("WORKDIR", "USER", "STOPSIGNAL"):
        if cmd != "WORKDIR" and len(args.split()) != 1:
            raise error(line, f"{cmd} requires exactly one argument")


def exec_form(args: str, line: int) -> list[str] | None:
    """The JSON array form's strings; None for shell form (Docker falls back the same way)."""
    if not args.startswith("["):
        return None
    try:
        v = json.loads(args)
    except ValueError:
        return None
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        return None
    return v


# ----------------------------------------------------------------------------- words


def _lex(s: str, env: Mapping[str, str], line: int, split: bool) -> list[str]:
    """Shell-like processing: quotes, backslash escapes, variable expansion."""
    words: list[str] = []
    cur: list[str] = []
    have = False
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if split and c in " \t\n":
            if have:
                words.append("".join(cur))
                cur, have = [], False
            i += 1
            continue
        if c == "$":
            # An unquoted expansion to nothing makes no word (as in a shell).
            val, i = _expand_var(s, i, env, line)
            cur.append(val)
            have = have or bool(val)
            continue
        have = True
        if c == "'":
            j = s.find("'", i + 1)
            if j < 0:
                raise error(line, f"unterminated single quote in {s!r}")
            cur.append(s[i + 1 : j])
            i = j + 1
        elif c == '"':
            i += 1
            while True:
                if i >= n:
                    raise error(line, f"unterminated double quote in {s!r}")
                c = s[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\" and i + 1 < n and s[i + 1] in '"\\$':
                    cur.append(s[i + 1])
                    i += 2
                elif c == "$":
                    val, i = _expand_var(s, i, env, line)
                    cur.append(val)
                else:
                    cur.append(c)
                    i += 1
        elif c == "\\":
            if i + 1 < n:
                cur.append(s[i + 1])
                i += 2
            else:
                cur.append(c)
                i += 1
        else:
            cur.append(c)
            i += 1
    if have:
        words.append("".join(cur))
    return words


def _expand_var(s: str, i: int, env: Mapping[str, str], line: int) -> tuple[str, int]:
    """Expand the variable at s[i] == '$'; returns (value, next index)."""
    if i + 1 < len(s) and s[i + 1] == "{":
        end = s.find("}", i + 2)
        if end < 0:
            raise error(line, f"missing '}}' in {s!r}")
        body = s[i + 2 : end]
        m = _VAR_NAME.match(body)
        if not m:
            raise error(line, f"bad substitution: ${{{body}}}")
        name, op = m.group(0), body[m.end() :]
        val = env.get(name)
        if not op:
            return val or "", end + 1
        for mod in (":-", ":+", "-", "+"):
            if op.startswith(mod):
                word = _lex(op[len(mod) :], env, line, split=False)
                alt = word[0] if word else ""
                if mod == ":-":
                    out = val if val else alt
                elif mod == ":+":
                    out = alt if val else ""
                elif mod == "-":
                    out = val if val is not None else alt
                else:
                    out = alt if val is not None else ""
                return out, end + 1
        raise error(line, f"unsupported modifier in ${{{body}}}")
    m = _VAR_NAME.match(s, i + 1)
    if not m:
        return "$", i + 1
    return env.get(m.group(0), ""), m.end()


def words(s: str, env: Mapping[str, str], line: int) -> list[str]:
    """Split into words with quotes removed and variables expanded."""
    return _lex(s, env, line, split=True)


def word(s: str, env: Mapping[str, str], line: int) -> str:
    """One value (WORKDIR, USER...): quotes removed, variables expanded, spaces kept."""
    w = _lex(s, env, line, split=False)
    return w[0] if w else ""


def key_values(inst: Instruction, env: Mapping[str, str]) -> list[tuple[str, str]]:
    """ENV / LABEL pairs, in both the ``K=V ...`` and the legacy ``K value`` forms."""
    first = inst.args.split(None, 1)
    if "=" not in first[0]:
        return [(first[0], word(first[1], env, inst.line))]
    pairs = []
    for w in words(inst.args, env, inst.line):
        k, eq, v = w.partition("=")
        if not eq:
            raise error(inst.line, f"{inst.cmd}: expected key=value, got {w!r}")
        if not k:
            raise error(inst.line, f"{inst.cmd} names can not be blank")
        pairs.append((k, v))
    return pairs


_DURATION = re.compile(r"(\d+(?:\.\d*)?)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9,
            "h": 3600 * 10**9}


def parse_duration(v: str, line: int, what: str) -> int:
    """Go-style duration ("30s", "1m30s", "500ms") in nanoseconds."""
    pos, total = 0, 0.0
    for m in _DURATION.finditer(v):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_NS[m.group(2)]
        pos = m.end()
    if pos != len(v) or not v:
        raise error(line, f"--{what}: invalid duration {v!r}")
    return int(total)


# ----------------------------------------------------------------------------- config


DEFAULT_SHELL = ("/bin/sh", "-c")
CONFIG_ONLY = frozenset({"ENV", "LABEL", "CMD", "ENTRYPOINT", "SHELL", "USER", "EXPOSE",
                         "VOLUME", "STOPSIGNAL", "MAINTAINER", "HEALTHCHECK", "WORKDIR"})


def substitution_env(config: Mapping[str, Any], args: Mapping[str, str]) -> dict[str, str]:
    """Variables for $VAR: build ARGs in scope, overridden by the config's Env."""
    env = dict(args)
    for kv in config.get("Env") or []:
        k, _, v = kv.partition("=")
        env[k] = v
    return env


def command(config: Mapping[str, Any], inst: Instruction) -> list[str]:
    """CMD/ENTRYPOINT/RUN argv: the JSON form, or the shell form run by SHELL."""
    argv = exec_form(inst.args, inst.line)
    if argv is not None:
        return argv
    return list(config.get("Shell") or DEFAULT_SHELL) + [inst.args]


def apply_config(config: dict[str, Any], inst: Instruction, env: Mapping[str, str], *,
                 cmd_set: bool = True) -> str:
    """Apply a config-only instruction to ``config`` (an image config's "config" section)
    in place; returns the normalized text recorded in history and the cache key.

    ``cmd_set`` says whether CMD was set by this build: a new ENTRYPOINT drops an
    inherited CMD, as Docker does. WORKDIR only sets the path here (the builder creates it).
    """
    c, line = inst.cmd, inst.line
    if c in ("ENV", "LABEL"):
        pairs = key_values(inst, env)
        if c == "ENV":
            cur = list(config.get("Env") or [])
            for k, v in pairs:
                cur = [e for e in cur if e.partition("=")[0] != k] + [f"{k}={v}"]
            config["Env"] = cur
        else:
            config["Labels"] = {**(config.get("Labels") or {}), **dict(pairs)}
        return f"{c} " + " ".join(f"{k}={v}" for k, v in pairs)
    if c in ("CMD", "ENTRYPOINT"):
        argv = command(config, inst)
        if c == "CMD":
            config["Cmd"] = argv
        else:
            config["Entrypoint"] = argv
            if not cmd_set:
                config["Cmd"] = None
        return f"{c} {json.dumps(argv)}"
    if c == "SHELL":
        config["Shell"] = exec_form(inst.args, line)
        return inst.text
    if c in ("USER", "STOPSIGNAL"):
        key = "User" if c == "USER" else "StopSignal"
        config[key] = word(inst.args, env, line)
        return f"{c} {config[key]}"
    if c == "EXPOSE":
        ports = dict(config.get("ExposedPorts") or {})
        for p in words(inst.args, env, line):
            for key in _ports(p, line):
                ports[key] = {}
        config["ExposedPorts"] = ports
        return "EXPOSE " + " ".join(sorted(ports))
    if c == "VOLUME":
        vols = exec_form(inst.args, line) or words(inst.args, env, line)
        config["Volumes"] = {**(config.get("Volumes") or {}), **{v: {} for v in vols}}
        return f"VOLUME {vols}"
    if c == "HEALTHCHECK":
        config["Healthcheck"] = _healthcheck(inst)
        return inst.text
    if c == "WORKDIR":
        path = word(inst.args, env, line)
        config["WorkingDir"] = posixpath.normpath(
            posixpath.join(config.get("WorkingDir") or "/", path))
        return f"WORKDIR {config['WorkingDir']}"
    if c == "MAINTAINER":  # deprecated; kept in history only
        return inst.text
    raise error(line, f"{c} cannot be applied to an image config")


def apply_changes(config: Mapping[str, Any], changes: Sequence[str]) -> dict[str, Any]:
    """``docker commit --change``: Dockerfile lines applied to a copy of ``config``."""
    out: dict[str, Any] = json.loads(json.dumps(dict(config)))
    for change in changes:
        for inst in parse(change):
            if inst.cmd not in CONFIG_ONLY:
                raise InvalidArgument(f"{inst.cmd} is not a valid change for commit")
            apply_config(out, inst, substitution_env(out, {}))
    return out


def _ports(spec: str, line: int) -> list[str]:
    port, _, proto = spec.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise error(line, f"EXPOSE: invalid protocol in {spec!r}")
    lo, _, hi = port.partition("-")
    if not lo.isdigit() or (hi and not hi.isdigit()):
        raise error(line, f"EXPOSE: invalid port {spec!r}")
    a, b = int(lo), int(hi or lo)
    if not (0 < a <= b <= 65535):
        raise error(line, f"EXPOSE: invalid port range {spec!r}")
    return [f"{p}/{proto}" for p in range(a, b + 1)]


def _healthcheck(inst: Instruction) -> dict[str, Any]:
    if inst.args.upper() == "NONE":
        return {"Test": ["NONE"]}
    rest = inst.args.split(None, 1)[1]
    argv = exec_form(rest, inst.line)
    hc: dict[str, Any] = {"Test": ["CMD", *argv] if argv is not None else ["CMD-SHELL", rest]}
    for flag, key in (("interval", "Interval"), ("timeout", "Timeout"),
                      ("start-period", "StartPeriod"), ("start-interval", "StartInterval")):
        v = inst.flag(flag)
        if v is not None:
            hc[key] = parse_duration(v, inst.line, flag)
    r = inst.flag("retries")
    if r is not None:
        hc["Retries"] = int(r)
    return hc
