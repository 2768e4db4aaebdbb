"""bench/run_all.py: how it reads what a benchmark printed, the status it gives, what it
writes, and the README table between its markers. The benchmarks here are tiny fake scripts
written to tmp_path; the real ones never run."""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path

import pytest

from bench import run_all
from bench.run_all import Bench


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


def fake(tmp_path: Path, name: str, body: str, timeout: float = 60.0,
         args: tuple[str, ...] = ("--size", "10"),
         quick_args: tuple[str, ...] = ("--size", "1")) -> Bench:
    return Bench(name, script(tmp_path, name, body), args, quick_args, timeout)


OK = """\
    import json, sys
    print("warming up")
    print("progress", file=sys.stderr)
    print(json.dumps({"benchmark": "fast", "argv": sys.argv[1:], "ours_ms": 12.5,
                      "theirs_ms": 25.0, "fast_ratio": 0.5, "sizes": [10, 50]}))
"""

DOCKER_SKIPPED = """\
    import json
    print(json.dumps({"pyswarm_recovery_median_s": 3.1,
                      "docker_skipped": "dockerd is not installed"}))
"""

RUNC_SKIPPED = """\
    import json
    print(json.dumps({"pyswarm_median_ms": 20.0, "runc": "skipped: runc is not installed"}))
"""

FAILS = """\
    import sys
    print("setting up")
    print("Traceback: boom", file=sys.stderr)
    sys.exit(3)
"""

NOT_JSON = """\
    print('{"half": 1}')
    print("done, see above")
"""

HANGS = """\
    import sys, time
    from pathlib import Path
    try:
        print("starting", flush=True)  # inside: a SIGINT once it is seen must clean up
        time.sleep(600)
    finally:
        Path(sys.argv[0]).with_suffix(".cleaned").write_text("yes")
"""

IGNORES_SIGINT = """\
    import os, signal, sys, time
    from pathlib import Path
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    Path(sys.argv[0]).with_suffix(".pid").write_text(str(os.getpid()))
    print("stubborn", flush=True)
    time.sleep(600)
"""


def test_figures_and_ratios_from_the_last_line(tmp_path: Path) -> None:
    rec = run_all.run_one(fake(tmp_path, "fast", OK), echo=False)
    assert rec["status"] == "ok"
    assert rec["exit_code"] == 0
    assert rec["figures"]["argv"] == ["--json", "--size", "10"]
    assert rec["figures"]["ours_ms"] == 12.5
    assert rec["ratios"] == {"fast_ratio": 0.5}
    assert rec["command"].endswith("fast.py --json --size 10")
    assert "error" not in rec


def test_quick_uses_the_quick_arguments(tmp_path: Path) -> None:
    rec = run_all.run_one(fake(tmp_path, "fast", OK), quick=True, echo=False)
    assert rec["figures"]["argv"] == ["--json", "--size", "1"]


@pytest.mark.parametrize("body, peer, reason", [
    (DOCKER_SKIPPED, "docker", "dockerd is not installed"),
    (RUNC_SKIPPED, "runc", "runc is not installed"),
])
def test_a_skipped_peer_is_no_pass(tmp_path: Path, body: str, peer: str, reason: str) -> None:
    rec = run_all.run_one(fake(tmp_path, "partial", body), echo=False)
    assert rec["status"] == f"ok, peer skipped: {peer}: {reason}"
    assert rec["skipped_peers"] == {peer: reason}
    assert rec["ratios"] == {}


def test_non_zero_exit_is_failed_with_the_tail(tmp_path: Path) -> None:
    rec = run_all.run_one(fake(tmp_path, "broken", FAILS), echo=False)
    assert rec["status"] == "failed"
    assert rec["exit_code"] == 3
    assert rec["error"] == "exit code 3"
    assert "Traceback: boom" in rec["output_tail"]
    assert rec["ratios"] == {}


def test_last_line_not_json_is_failed(tmp_path: Path) -> None:
    rec = run_all.run_one(fake(tmp_path, "chatty", NOT_JSON), echo=False)
    assert rec["status"] == "failed"
    assert rec["exit_code"] == 0
    assert "not JSON" in rec["error"] and "done, see above" in rec["error"]
    assert rec["figures"] == {}


def test_json_that_is_not_an_object_is_failed(tmp_path: Path) -> None:
    rec = run_all.run_one(fake(tmp_path, "listy", "print('[1, 2]')\n"), echo=False)
    assert rec["status"] == "failed"
    assert "not an object" in rec["error"]


def test_a_hung_script_is_interrupted_cleans_up_and_is_failed(tmp_path: Path) -> None:
    bench = fake(tmp_path, "hangs", HANGS, timeout=1)
    rec = run_all.run_one(bench, echo=False, grace=30)
    assert rec["status"] == "failed"
    assert rec["error"] == "timed out after 1 s"
    assert "starting" in rec["output_tail"]
    # SIGINT, not SIGKILL, first: the script's finally (its cleanup) ran.
    assert bench.script.with_suffix(".cleaned").read_text() == "yes"

def test_a_runner_started_with_sigint_ignored_still_interrupts_cleanly(tmp_path: Path) -> None:
    """A background job of a non-interactive shell (CI scripts, nohup) starts with SIGINT
    ignored, and a child inherits that: the benchmark would never see the SIGINT, run out
    its grace and be killed without its cleanup (a lab or daemons left behind). Each
    benchmark starts with SIGINT at its default."""
    bench = fake(tmp_path, "hangs", HANGS, timeout=1)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        rec = run_all.run_one(bench, echo=False, grace=30)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert rec["error"] == "timed out after 1 s"
    assert rec["wall_seconds"] < 30, "it ran out its grace: the SIGINT was ignored"
    assert bench.script.with_suffix(".cleaned").read_text() == "yes"



def test_a_script_deaf_to_sigint_is_killed(tmp_path: Path) -> None:
    bench = fake(tmp_path, "stubborn", IGNORES_SIGINT, timeout=1)
    rec = run_all.run_one(bench, echo=False, grace=0.5)
    assert rec["status"] == "failed"
    assert rec["error"].startswith("timed out")
    pid = int(bench.script.with_suffix(".pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_missing_script_is_skipped(tmp_path: Path) -> None:
    rec = run_all.run_one(Bench("scale", tmp_path / "scale.py"), echo=False)
    assert rec["status"].startswith("skipped: ")
    assert "does not exist" in rec["status"]
    assert rec["exit_code"] is None


def test_nan_becomes_null_and_its_ratio_is_not_listed() -> None:
    figures, error = run_all.parse_last_line(
        ["noise", '{"pyswarm_10_seconds": NaN, "docker_10_seconds": 2.0, '
                  '"converge_10_ratio": NaN, "docker_10_note": "not converged after 300 s"}', ""])
    assert error is None and figures is not None
    out = run_all.classify(figures)
    assert out["status"] == "ok"
    assert out["figures"]["pyswarm_10_seconds"] is None
    assert out["ratios"] == {}
    assert any("docker_10_note" in note for note in out["notes"])
    json.dumps(out, allow_nan=False)  # what is written is strict JSON


def test_no_stdout_is_an_error() -> None:
    figures, error = run_all.parse_last_line([])
    assert figures is None and error is not None and "no output" in error


# ---- the whole run: results file and README -----------------------------------------------


README = """\
# Benchmarks

Intro text that must stay.

<!-- results:begin -->
old table
<!-- results:end -->

Text after the markers, also kept.
"""


def suite(tmp_path: Path) -> list[Bench]:
    return [fake(tmp_path, "fast", OK), fake(tmp_path, "partial", DOCKER_SKIPPED),
            fake(tmp_path, "broken", FAILS)]


def test_main_writes_results_and_the_table(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(README)
    results_dir = tmp_path / "results"
    code = run_all.main([], benchmarks=suite(tmp_path), results_dir=results_dir,
                        readme=readme, echo=False)
    assert code == 1  # one benchmark failed
    results = json.loads((results_dir / "latest.json").read_text())
    assert set(results) == {"date", "command", "machine", "git", "benchmarks"}
    assert results["date"].endswith("Z")
    assert "run_all.py" in results["command"]
    assert set(results["machine"]) == {"kernel", "cpu", "cores", "memory_gib", "python",
                                       "debian"}
    assert set(results["git"]) >= {"commit", "dirty"}
    assert [(b["name"], b["status"]) for b in results["benchmarks"]] == [
        ("fast", "ok"), ("partial", "ok, peer skipped: docker: dockerd is not installed"),
        ("broken", "failed")]
    assert list(results_dir.iterdir()) == [results_dir / "latest.json"]  # no dated copy

    text = readme.read_text()
    before, rest = text.split("<!-- results:begin -->\n")
    table, after = rest.split("\n<!-- results:end -->")
    assert before == README.split("<!-- results:begin -->")[0]
    assert after == "\n\nText after the markers, also kept.\n"
    assert "old table" not in table
    assert "| **fast_ratio** | **0.5**" in table
    assert "| | docker | skipped: dockerd is not installed |" in table
    assert "| | ours_ms | 12.5 |" in table
    assert "| | sizes | 10, 50 |" in table
    assert "failed: exit code 3" in table
    assert "Machine: Linux" in table


def test_regenerating_twice_keeps_one_block(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(README)
    run_all.update_readme(readme, "first")
    run_all.update_readme(readme, "second")
    text = readme.read_text()
    assert text.count("<!-- results:begin -->") == 1 and text.count("<!-- results:end -->") == 1
    assert "second" in text and "first" not in text
    assert text == README.replace("old table", "second")


def test_readme_without_markers_gets_a_section_appended(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Bench\n\nHand-written.")
    run_all.update_readme(readme, "table")
    assert readme.read_text() == ("# Bench\n\nHand-written.\n\n## Results\n\n"
                                  "<!-- results:begin -->\ntable\n<!-- results:end -->\n")


def test_only_runs_a_subset_and_keeps_the_others(tmp_path: Path) -> None:
    results_dir = tmp_path / "results"
    benches = suite(tmp_path)
    run_all.main([], benchmarks=benches, results_dir=results_dir, readme=None, echo=False)
    (tmp_path / "fast.py").write_text("print('not json')\n")  # would fail if it ran again
    code = run_all.main(["--only", "partial"], benchmarks=benches, results_dir=results_dir,
                        readme=None, echo=False)
    assert code == 0
    records = json.loads((results_dir / "latest.json").read_text())["benchmarks"]
    assert [(r["name"], r["status"], bool(r.get("carried_over"))) for r in records] == [
        ("fast", "ok", True),
        ("partial", "ok, peer skipped: docker: dockerd is not installed", False),
        ("broken", "failed", True)]


def test_only_rejects_an_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        run_all.main(["--only", "nope"], benchmarks=suite(tmp_path),
                     results_dir=tmp_path, readme=None, echo=False)


def test_quick_writes_quick_json_and_leaves_the_readme(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(README)
    results_dir = tmp_path / "results"
    code = run_all.main(["--quick", "--keep", "--only", "fast"], benchmarks=suite(tmp_path),
                        results_dir=results_dir, readme=readme, echo=False)
    assert code == 0
    results = json.loads((results_dir / "quick.json").read_text())
    assert results["benchmarks"][0]["figures"]["argv"] == ["--json", "--size", "1"]
    assert not (results_dir / "latest.json").exists()
    assert len(list(results_dir.glob("[0-9]*-[0-9]*.json"))) == 1  # --keep's dated copy
    assert readme.read_text() == README
