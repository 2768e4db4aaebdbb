"""Run every benchmark in sequence and record what each printed.

    python bench/run_all.py [--only start_latency,lb] [--quick] [--keep]

Each script runs as a subprocess with `--json` and sizes that fit a 2-core machine in a few
minutes in all; its last stdout line is one JSON object, its figures. Each gets a generous
timeout: a script that hangs is interrupted (SIGINT, so that its own cleanup runs), killed
with its process group if it does not go, recorded as failed with the tail of its output,
and the suite goes on.

Per benchmark: name, the exact command, exit code, wall time, status, the figures and
the ratios (the keys ending in `_ratio`, only those the script printed, as numbers). Status:

- "ok": exit 0 and a JSON object on the last line, no peer skipped;
- "ok, peer skipped: <peer>: <reason>": the same, but the script reported a peer it could
  not run (a key containing "skipped", or a value starting with "skipped"): its ratios are
  missing, never counted as passed;
- "failed": non-zero exit, timeout, or a last line that is no JSON object (`error` says
  which, `output_tail` holds the end of the output);
- "skipped: <reason>": the script does not exist (yet).

Writes bench/results/latest.json (with --keep also a dated copy) and regenerates the table
between the markers in bench/README.md. With --only, the benchmarks not run keep their
previous records in latest.json (each record has its own date and commit). --quick uses even
smaller sizes to check the plumbing: its results go to bench/results/quick.json and the
README is left alone unless --readme names a file. Exit status 1 if a benchmark failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
README = REPO / "bench" / "README.md"
BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"
TAIL_LINES = 40


@dataclass(frozen=True)
class Bench:
    name: str
    script: Path
    args: tuple[str, ...] = ()
    quick_args: tuple[str, ...] = ()
    timeout: float = 1800.0  # seconds; generous: a hung script is what it catches


BENCHMARKS: tuple[Bench, ...] = (
    Bench("start_latency", REPO / "bench" / "start_latency.py",
          ("-n", "30"), ("-n", "5"), timeout=900),
    Bench("converge", REPO / "bench" / "converge.py",
          ("--sizes", "10,50", "--timeout", "300"), ("--sizes", "3", "--timeout", "120"),
          timeout=2400),
    Bench("recovery", REPO / "bench" / "recovery.py",
          ("--rounds", "3", "--peer-rounds", "1"),
          ("--rounds", "1", "--peer-rounds", "1", "--replicas", "6"), timeout=2400),
    Bench("lb", REPO / "bench" / "lb.py",
          ("--duration", "3"), ("--duration", "1", "--connections", "8"), timeout=900),
    Bench("scale", REPO / "bench" / "scale.py",
          ("--nodes", "100,300", "--tasks", "3000", "--stores", "sqlite,etcd"),
          ("--nodes", "20", "--tasks", "200", "--stores", "sqlite,etcd", "--rest", "2"),
          timeout=2700),
    Bench("failover", REPO / "bench" / "failover.py",
          ("--rounds", "10", "--peer-rounds", "1"),
          ("--rounds", "2", "--peer-rounds", "1", "--writes", "50"), timeout=2400),
)


def log(message: str) -> None:
    print(f"[run_all] {message}", file=sys.stderr, flush=True)


def now_utc() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def display_path(path: str | Path) -> str:
    """A path under the repository relative to it (commands read as typed from its root)."""
    try:
        return str(Path(path).relative_to(REPO))
    except ValueError:
        return str(path)


# ---- one benchmark ------------------------------------------------------------------------


@dataclass
class Output:
    """A child's stdout and stderr lines, collected by reader threads and echoed to our
    stderr (indented) as they come, so that a long benchmark shows its progress."""

    echo: bool = True
    stdout: list[str] = field(default_factory=list)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reader(self, stream: Any, is_stdout: bool) -> threading.Thread:
        def run() -> None:
            for raw in stream:
                line = raw.decode(errors="replace").rstrip("\n")
                with self.lock:
                    if is_stdout:
                        self.stdout.append(line)
                    self.tail.append(line)
                if self.echo:
                    print(f"    | {line}", file=sys.stderr, flush=True)
            stream.close()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread


def _default_sigint() -> None:
    """In the benchmark's process, before it execs: SIGINT at its default, which Python
    turns into KeyboardInterrupt. An ignored SIGINT is inherited (a background job of a
    non-interactive shell, as CI scripts and nohup start it, has one), and the benchmark
    would then never see the SIGINT that `stop` sends, nor clean up."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGINT first: the benchmarks clean up (daemons, namespaces, mounts) in `finally`
    blocks, which a KeyboardInterrupt runs. Its process group is killed only if it is still
    there after `grace` seconds (the group's id is the child's pid: start_new_session)."""
    try:
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(grace)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def run_one(bench: Bench, quick: bool = False, python: str = sys.executable,
            grace: float = 60.0, echo: bool = True, heartbeat: float = 120.0,
            ) -> dict[str, Any]:
    """Run one benchmark and return its record (see the module's docstring)."""
    args = bench.quick_args if quick else bench.args
    command = [python, str(bench.script), "--json", *args]
    record: dict[str, Any] = {
        "name": bench.name,
        "command": " ".join(shlex.quote(display_path(part)) for part in command),
        "date": now_utc(),
        "exit_code": None,
        "wall_seconds": 0.0,
        "timeout_seconds": bench.timeout,
        "status": "failed",
        "figures": {},
        "ratios": {},
    }
    if not bench.script.exists():
        record["status"] = f"skipped: {display_path(bench.script)} does not exist"
        return record
    output = Output(echo=echo)
    start = time.monotonic()
    proc = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"),
                            start_new_session=True, preexec_fn=_default_sigint)
    assert proc.stdout is not None and proc.stderr is not None
    readers = [output.reader(proc.stdout, True), output.reader(proc.stderr, False)]
    timed_out = interrupted = False
    try:
        while True:
            left = bench.timeout - (time.monotonic() - start)
            if left <= 0:
                timed_out = True
                log(f"{bench.name}: no end after {bench.timeout:.0f} s; interrupting it")
                stop(proc, grace)
                break
            try:
                proc.wait(min(left, heartbeat))
                break
            except subprocess.TimeoutExpired:
                log(f"{bench.name}: still running, {time.monotonic() - start:.0f} s")
    except KeyboardInterrupt:
        interrupted = True
        log(f"{bench.name}: interrupted; letting it clean up")
        stop(proc, grace)
    for reader in readers:  # a grandchild still holding the pipes must not hang the suite
        reader.join(5)
    record["wall_seconds"] = round(time.monotonic() - start, 2)
    record["exit_code"] = proc.returncode
    with output.lock:
        stdout, tail = list(output.stdout), list(output.tail)
    figures, error = parse_last_line(stdout)
    if figures is not None:
        record.update(classify(figures))
    if interrupted:
        error = "interrupted (Ctrl-C)"
    elif timed_out:
        error = f"timed out after {bench.timeout:.0f} s"
    elif proc.returncode != 0:
        error = f"exit code {proc.returncode}"
    if error:
        record["status"] = "failed"
        record["error"] = error
        record["output_tail"] = tail
    if interrupted:
        raise Interrupted(record)
    return record


class Interrupted(Exception):
    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__(record["name"])
        self.record = record


def parse_last_line(stdout: Sequence[str]) -> tuple[dict[str, Any] | None, str | None]:
    """The JSON object on the last non-empty stdout line, or None and why not."""
    lines = [line for line in stdout if line.strip()]
    if not lines:
        return None, "no output on stdout (expected one JSON object on the last line)"
    last = lines[-1].strip()
    try:
        value = json.loads(last)  # accepts NaN, which json.dumps writes for a float nan
    except ValueError:
        return None, f"last line of stdout is not JSON: {last[:200]}"
    if not isinstance(value, dict):
        return None, f"last line of stdout is JSON but not an object: {last[:200]}"
    return value, None


def classify(figures: dict[str, Any]) -> dict[str, Any]:
    """Status, clean figures, ratios, skipped peers and notes from a script's JSON object.

    NaN and infinities (a run that did not finish in time) become null, with a note; a
    ratio is listed only if the script printed it as a finite number."""
    clean: dict[str, Any] = {}
    ratios: dict[str, float] = {}
    skipped: dict[str, str] = {}
    notes: list[str] = []
    for key, value in figures.items():
        if isinstance(value, float) and not math.isfinite(value):
            notes.append(f"{key}: {value} (no figure: the run did not finish or divided by 0)")
            value = None
        clean[key] = value
        if "skipped" in key:
            peer = key.replace("_skipped", "").replace("skipped", "").strip("_") or key
            skipped[peer] = str(value)
        elif isinstance(value, str) and value.lower().startswith("skipped"):
            skipped[key] = re.sub(r"^skipped:?\s*", "", value, flags=re.IGNORECASE)
        elif key.endswith("_ratio"):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                ratios[key] = value
            elif value is not None:
                notes.append(f"{key}: {value!r} is not a number")
        elif isinstance(value, str) and (key.endswith("_note") or key.endswith("_error")):
            notes.append(f"{key}: {value}")
    status = "ok"
    if skipped:
        status = "ok, peer skipped: " + "; ".join(f"{peer}: {reason}"
                                                  for peer, reason in skipped.items())
    out: dict[str, Any] = {"status": status, "figures": clean, "ratios": ratios}
    if skipped:
        out["skipped_peers"] = skipped
    if notes:
        out["notes"] = notes
    return out


# ---- the suite ----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    def read(path: str) -> str:
        try:
            return Path(path).read_text()
        except OSError:
            return ""

    cpu = next((line.split(":", 1)[1].strip() for line in read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    mem_kib = next((int(line.split()[1]) for line in read("/proc/meminfo").splitlines()
                    if line.startswith("MemTotal:")), 0)
    return {
        "kernel": platform.release(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "debian": read("/etc/debian_version").strip() or None,
    }


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True,
                              text=True).stdout

    # Porcelain lines are "XY path": the leading status column may be a space.
    changed = [line for line in git("status", "--porcelain", "--untracked-files=no")
               .splitlines() if line.strip()]
    return {"commit": git("rev-parse", "HEAD").strip() or None, "dirty": bool(changed),
            "changed_files": [line[3:] for line in changed][:50]}


def run_suite(benchmarks: Sequence[Bench], quick: bool = False, python: str = sys.executable,
              grace: float = 60.0, echo: bool = True,
              ) -> tuple[list[dict[str, Any]], bool]:
    """Every benchmark in turn; the records, and whether the suite was interrupted."""
    records: list[dict[str, Any]] = []
    began = time.monotonic()
    for i, bench in enumerate(benchmarks, 1):
        log(f"{bench.name} ({i}/{len(benchmarks)}) starting; suite at "
            f"{time.monotonic() - began:.0f} s")
        try:
            record = run_one(bench, quick=quick, python=python, grace=grace, echo=echo)
        except Interrupted as exc:
            records.append(exc.record)
            log(f"{bench.name}: interrupted after {exc.record['wall_seconds']:.0f} s; "
                "stopping the suite")
            return records, True
        records.append(record)
        log(f"{bench.name}: {record['status']}"
            + (f" ({record['error']})" if record.get("error") else "")
            + f" in {record['wall_seconds']:.0f} s; suite at {time.monotonic() - began:.0f} s")
    return records, False


def merge_previous(records: list[dict[str, Any]], previous_file: Path,
                   order: Sequence[str]) -> list[dict[str, Any]]:
    """With --only: the benchmarks not run now keep their records from the last results,
    marked as carried over; in the suite's order."""
    try:
        previous = json.loads(previous_file.read_text())
    except (OSError, ValueError):
        return records
    ran = {r["name"] for r in records}
    kept = [dict(r, carried_over=True) for r in previous.get("benchmarks", [])
            if r.get("name") not in ran]
    merged = records + kept
    rank = {name: i for i, name in enumerate(order)}
    return sorted(merged, key=lambda r: rank.get(r["name"], len(rank)))


def write_results(results: dict[str, Any], path: Path, keep: bool) -> list[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    written = [path]
    if keep:
        stamp = dt.datetime.strptime(results["date"], "%Y-%m-%dT%H:%M:%SZ")
        dated = path.with_name(stamp.strftime("%Y%m%d-%H%M%S") + ".json")
        dated.write_text(text)
        written.append(dated)
    return written


# ---- the README table ---------------------------------------------------------------------


def ratio_reading(key: str) -> str:
    """How to read one ratio: which way is better for pyswarm."""
    if "_vs_direct_" in key and key.endswith("_rps_ratio"):
        return "requests/s, routing mesh ÷ one replica directly: 1 = the balancer costs nothing"
    if key.endswith("_rps_ratio"):
        return "requests/s, pyswarm ÷ peer: above 1 = pyswarm serves more"
    if key.endswith("_p99_ratio"):
        return "p99 latency, pyswarm ÷ peer: below 1 = pyswarm faster"
    if key.endswith("_target_ratio"):
        return ("measured ÷ the issue's target (placements/s: target ÷ measured): "
                "below 1 = the target is met")
    if key == "start_ratio":
        return "median start time, pyswarm ÷ runc: below 1 = pyswarm faster"
    if re.fullmatch(r"converge_\d+_ratio", key):
        return "time to converge, pyswarm ÷ Docker Swarm: below 1 = pyswarm faster"
    if key == "recovery_ratio":
        return "recovery time, pyswarm ÷ Docker Swarm: below 1 = pyswarm faster"
    if key == "down_detect_ratio":
        return "time to see a node down, pyswarm ÷ Docker Swarm: below 1 = pyswarm faster"
    if key == "failover_target_ratio":
        return "median time to a new leader ÷ the issue's 3 s: below 1 = the target is met"
    if re.fullmatch(r"failover_\w+_ratio", key):
        return ("time from the leader's death, pyswarm ÷ Docker Swarm (3 managers): "
                "below 1 = pyswarm faster")
    if key.startswith("etcd_vs_sqlite_write"):
        return "writes/s, etcd (3 members) ÷ sqlite: the price of a replicated store"
    return "see the script's docstring"


def cell(value: Any, limit: int = 140) -> str:
    if value is None:
        text = "—"
    elif isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(str(v) for v in value)
    elif isinstance(value, dict):
        text = ", ".join(f"{k}: {v}" for k, v in value.items())
    else:
        text = str(value)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[:limit - 1] + "…"
    return text.replace("|", "\\|")


def machine_line(m: dict[str, Any]) -> str:
    parts = [f"Linux {m.get('kernel')}", f"{m.get('cpu')} ({m.get('cores')} cores)",
             f"{m.get('memory_gib')} GiB", f"Python {m.get('python')}"]
    if m.get("debian"):
        parts.append(f"Debian {m['debian']}")
    return ", ".join(parts)


def render_table(results: dict[str, Any]) -> str:
    git = results.get("git") or {}
    commit = (git.get("commit") or "unknown")[:12] + (" (uncommitted changes)"
                                                      if git.get("dirty") else "")
    lines = [
        f"Run `{results.get('command')}` on {results.get('date')}, commit {commit}.",
        "",
        f"Machine: {machine_line(results.get('machine') or {})}.",
        "",
        "| benchmark | figure | value |",
        "| --- | --- | --- |",
    ]
    for rec in results.get("benchmarks", []):
        name = f"**{rec['name']}**"
        status = rec["status"]
        if rec.get("error"):
            status += f": {rec['error']}"
        when = f", {rec.get('date')}" if rec.get("carried_over") else ""
        lines.append(f"| {name} | status | {cell(status)} ({rec.get('wall_seconds', 0):.0f} s"
                     f"{when}) |")
        lines.append(f"| | command | `{cell(rec.get('command'), 300)}` |")
        for key, value in rec.get("ratios", {}).items():
            lines.append(f"| | **{key}** | **{value:g}** ({ratio_reading(key)}) |")
        for peer, reason in rec.get("skipped_peers", {}).items():
            lines.append(f"| | {cell(peer)} | skipped: {cell(reason)} |")
        skipped_keys = {k for k, v in rec.get("figures", {}).items()
                        if "skipped" in k or (isinstance(v, str)
                                              and v.lower().startswith("skipped"))}
        for key, value in rec.get("figures", {}).items():
            if key in rec.get("ratios", {}) or key in skipped_keys or key == "benchmark":
                continue
            lines.append(f"| | {cell(key)} | {cell(value)} |")
        for note in rec.get("notes", []):
            lines.append(f"| | note | {cell(note)} |")
    return "\n".join(lines)


def update_readme(readme: Path, table: str) -> None:
    """Replace what lies between the markers; everything outside them is kept as it is.
    Without markers, a results section with them is appended."""
    text = readme.read_text() if readme.exists() else ""
    block = f"{BEGIN}\n{table}\n{END}"
    begin, end = text.find(BEGIN), text.find(END)
    if begin != -1 and end > begin:
        text = text[:begin] + block + text[end + len(END):]
    else:
        text = text + ("\n" if text and not text.endswith("\n") else "") + \
            f"\n## Results\n\n{block}\n"
    readme.write_text(text)


# ---- command line -------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None,
         benchmarks: Sequence[Bench] = BENCHMARKS,
         results_dir: Path = RESULTS, readme: Path | None = README,
         grace: float = 60.0, echo: bool = True,
         date: Callable[[], str] = now_utc) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = [b.name for b in benchmarks]
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(names)}")
    parser.add_argument("--quick", action="store_true",
                        help="even smaller sizes (a plumbing check); writes quick.json and "
                        "leaves the README alone unless --readme is given")
    parser.add_argument("--keep", action="store_true",
                        help="also write a dated copy results/YYYYMMDD-HHMMSS.json")
    parser.add_argument("--out", type=Path, help="results file (default "
                        "bench/results/latest.json, or quick.json with --quick)")
    parser.add_argument("--readme", type=Path, help="README whose table to regenerate")
    parser.add_argument("--quiet", action="store_true",
                        help="do not echo the benchmarks' own output")
    opts = parser.parse_args(argv)
    selected = list(benchmarks)
    if opts.only:
        wanted = [n.strip() for n in opts.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(names)}")
        selected = [b for b in benchmarks if b.name in wanted]
    out = opts.out or results_dir / ("quick.json" if opts.quick else "latest.json")
    target_readme = opts.readme or (None if opts.quick else readme)

    started = date()
    command = " ".join(shlex.quote(a) for a in
                       [display_path(sys.executable), display_path(Path(__file__)),
                        *(argv if argv is not None else sys.argv[1:])])
    records, interrupted = run_suite(selected, quick=opts.quick, grace=grace,
                                     echo=echo and not opts.quiet)
    git = git_state()
    for record in records:
        record["commit"] = git["commit"]
    if interrupted:
        log("interrupted: nothing written")
        summarize(records)
        return 130
    if opts.only:
        records = merge_previous(records, out, names)
    results = {"date": started, "command": command, "machine": machine(), "git": git,
               "benchmarks": records}
    for path in write_results(results, out, opts.keep):
        log(f"wrote {display_path(path)}")
    if target_readme is not None:
        update_readme(target_readme, render_table(results))
        log(f"table regenerated in {display_path(target_readme)}")
    summarize(records)
    return 1 if any(r["status"] == "failed" for r in records
                    if not r.get("carried_over")) else 0


def summarize(records: Sequence[dict[str, Any]]) -> None:
    for rec in records:
        if rec.get("carried_over"):
            continue
        ratios = ", ".join(f"{k} {v:g}" for k, v in rec.get("ratios", {}).items()) or "-"
        print(f"{rec['name']:14} {rec['wall_seconds']:7.0f} s  {rec['status']}"
              + (f" ({rec['error']})" if rec.get("error") else ""))
        print(f"{'':14} ratios: {ratios}")


if __name__ == "__main__":
    sys.exit(main())
