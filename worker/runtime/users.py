"""Turning a Docker `--user` string into ids, using the container's own /etc/passwd and
/etc/group.

Accepted forms: "", "uid", "uid:gid", "name", "name:group" (and mixes). Numeric ids work
without any passwd entry (gid then defaults to 0, home to "/"); a name that is not in the
container's files fails with Docker's message "unable to find user NAME". Supplementary
groups are the groups of /etc/group that list the user by name, as Docker does.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExecUser:
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def _entries(text: str) -> list[list[str]]:
    return [line.split(":") for line in text.splitlines()
            if line and not line.startswith("#") and line.count(":") >= 2]


def resolve(spec: str, passwd: str, group: str) -> ExecUser:
    """Resolve `spec` against the file contents (empty strings when the files are absent)."""
    user, _, grp = (spec or "0").partition(":")
    users = _entries(passwd)
    entry = None
    for e in users:
        if (e[0] == user or (user.isdigit() and e[2] == user)) and len(e) >= 4:
            entry = e
            break
    if entry is None:
        if not user.isdigit():
            raise LookupError(f"unable to find user {user}: no matching entries in passwd file")
        uid, gid, home, name = int(user), 0, "/", ""
    else:
        name, uid, gid = entry[0], int(entry[2]), int(entry[3])
        home = entry[5] if len(entry) > 5 else "/"
    groups = _entries(group)
    if grp:
        for g in groups:
            if g[0] == grp or (grp.isdigit() and g[2] == grp):
                gid = int(g[2])
                break
        else:
            if not grp.isdigit():
                raise LookupError(f"unable to find group {grp}: no matching entries in group file")
            gid = int(grp)
    extra: list[int] = []
    if name and not grp:
        for g in groups:
            members = g[3].split(",") if len(g) > 3 else []
            if name in members and int(g[2]) != gid and int(g[2]) not in extra:
                extra.append(int(g[2]))
    return ExecUser(uid, gid, (gid, *extra), home or "/")
