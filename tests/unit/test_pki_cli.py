"""The CLI of secure joins (join, join-token, init's instructions, node promote/demote)
against an in-process fake Control server: what it prints and what it asks for."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from pyswarm.cli.main import main
from pyswarm.proto import cluster_pb2, cluster_pb2_grpc, objects_pb2
from tests.unit.test_cli_cluster import FakeControl

WORKER = "PSWMTKN-1-" + "a" * 50 + "-" + "w" * 25
MANAGER = "PSWMTKN-1-" + "a" * 50 + "-" + "m" * 25


class FakeSwarm(FakeControl):
    def __init__(self) -> None:
        super().__init__()
        self.worker, self.manager = WORKER, MANAGER

    def JoinTokens(self, request: Any, context: Any) -> Any:
        self._record("JoinTokens", request, context)
        if request.rotate == "worker":
            self.worker = "PSWMTKN-1-" + "a" * 50 + "-" + "r" * 25
        return cluster_pb2.JoinTokensResponse(worker=self.worker, manager=self.manager,
                                              manager_addr="10.0.0.1:2377")

    def Join(self, request: Any, context: Any) -> Any:
        self._record("Join", request, context)
        if request.token != WORKER:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the manager at 10.0.0.1:2377 "
                          "refused: the join token is not valid for this swarm")
        return cluster_pb2.JoinResponse(node_id="n3", role="worker")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSwarm]:
    run = tempfile.mkdtemp(prefix="pyswarm-cli-")
    servicer = FakeSwarm()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    cluster_pb2_grpc.add_ControlServicer_to_server(servicer, server)
    server.add_insecure_port(f"unix://{run}/pyswarm.sock")
    server.start()
    monkeypatch.setenv("PYSWARM_RUN", run)
    try:
        yield servicer
    finally:
        server.stop(0)
        shutil.rmtree(run, ignore_errors=True)


def test_init_prints_the_worker_join_command(fake: FakeSwarm,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", "--advertise-addr", "10.0.0.1", "--listen-addr", "10.0.0.1:2377"]) == 0
    out = capsys.readouterr().out
    assert ("To add a worker to this swarm, run the following command:\n\n"
            f"    pyswarm join --token {WORKER} 10.0.0.1:2377\n") in out
    assert "run 'pyswarm join-token manager'" in out
    (request,) = fake.sent("Init")
    assert request.listen_addr == "10.0.0.1:2377"


def test_join_token_text_quiet_and_rotate(fake: FakeSwarm,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["join-token", "worker"]) == 0
    assert capsys.readouterr().out == (
        "To add a worker to this swarm, run the following command:\n\n"
        f"    pyswarm join --token {WORKER} 10.0.0.1:2377\n\n")
    assert main(["join-token", "-q", "manager"]) == 0
    assert capsys.readouterr().out == MANAGER + "\n"
    assert main(["join-token", "--rotate", "worker"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Successfully rotated worker join token.\n\n")
    assert fake.worker in out and fake.sent("JoinTokens")[-1].rotate == "worker"


def test_join_sends_everything_to_the_local_daemon(fake: FakeSwarm,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["join", "--token", WORKER, "--advertise-addr", "198.18.0.2",
                 "198.18.0.1:2377"]) == 0
    assert capsys.readouterr().out == "This node joined a swarm as a worker.\n"
    (request,) = fake.sent("Join")
    assert (request.addr, request.token, request.advertise_addr) == (
        "198.18.0.1:2377", WORKER, "198.18.0.2")


def test_a_refused_join_exits_non_zero_with_the_reason(fake: FakeSwarm,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["join", "--token", MANAGER, "10.0.0.1"]) != 0
    assert "not valid for this swarm" in capsys.readouterr().err


def test_join_needs_a_token(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["join", "10.0.0.1"])
    assert caught.value.code == 125 and "--token" in capsys.readouterr().err


def test_promote_and_demote_say_what_happened(fake: FakeSwarm,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["node", "promote", "beta"]) == 0
    assert capsys.readouterr().out == "Node beta promoted to a manager in the swarm.\n"
    (request,) = fake.sent("UpdateNode")
    assert request.spec.desired_role == objects_pb2.NODE_ROLE_MANAGER
    assert main(["node", "promote", "alpha"]) == 0
    assert capsys.readouterr().out == "Node alpha is already a manager.\n"
    assert main(["node", "demote", "alpha"]) == 0
    assert capsys.readouterr().out == "Manager alpha demoted in the swarm.\n"
    assert main(["node", "demote", "nosuch"]) == 1
    assert "node nosuch not found" in capsys.readouterr().err
