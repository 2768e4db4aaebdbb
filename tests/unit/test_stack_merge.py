"""Several -c files merged, and `stack config` output that loads back to the same stack."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyswarm.manager.stack import StackInvalid, load_stack, render_config

from .test_stack_support import write


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


BASE = """
    services:
      web:
        image: busybox:1
        command: ["sh", "-c", "sleep 1"]
        environment: [A=1, B=2]
        labels: {keep: "yes"}
        ports: ["80:80"]
        volumes: ["data:/data", "./a:/a"]
        networks: [front]
        deploy:
          replicas: 1
          placement: {constraints: ["node.role == worker"]}
      db:
        image: postgres
    networks:
      front:
    volumes:
      data:
    """
OVERRIDE = """
    services:
      web:
        image: busybox:2
        command: ["true"]
        environment: {B: two, C: "3"}
        ports: ["443:443", "80:80"]
        volumes: ["./b:/a:ro"]
        networks: {back: {aliases: [w]}}
        deploy:
          replicas: 4
          placement: {constraints: ["node.labels.ssd == true"]}
    networks:
      back:
    """


def test_later_files_override(tmp_path: Path) -> None:
    paths = [write(tmp_path, "a.yml", BASE), write(tmp_path, "b.yml", OVERRIDE)]
    stack = load_stack([Path(p.name) for p in paths], "app", {})
    web = next(s for s in stack.services if s.name == "app_web")
    c = web.task.container
    assert c.image == "busybox:2"
    assert list(c.args) == ["true"]                       # commands replace
    assert list(c.env) == ["A=1", "B=two", "C=3"]         # maps merge
    assert c.labels["keep"] == "yes"
    assert [p.published_port for p in web.endpoint.ports] == [80, 443]  # appended, deduped
    assert [(m.source, m.target, m.read_only) for m in c.mounts] == [
        ("app_data", "/data", False), (str(tmp_path / "b"), "/a", True)]  # same target replaced
    assert [(n.target, list(n.aliases)) for n in web.task.networks] == [
        ("app_front", []), ("app_back", ["w"])]
    assert web.replicated.replicas == 4
    assert list(web.task.placement.constraints) == ["node.role == worker",
                                                    "node.labels.ssd == true"]


def test_errors_name_the_file_the_value_came_from(tmp_path: Path) -> None:
    write(tmp_path, "a.yml", BASE)
    write(tmp_path, "b.yml", "services:\n  web:\n    deploy: {replicas: many}\n")
    with pytest.raises(StackInvalid) as info:
        load_stack([Path("a.yml"), Path("b.yml")], "app", {})
    assert str(info.value) == ('b.yml:3: services.web.deploy.replicas: must be a non-negative '
                               'integer, got "many"')


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StackInvalid, match="nope.yml: cannot read: No such file"):
        load_stack([Path("nope.yml")], "app", {})


def test_render_config_reloads_to_the_same_stack(tmp_path: Path) -> None:
    write(tmp_path, "pw.txt", "secret")
    write(tmp_path, "web.env", "FROM_FILE=1\n")
    write(tmp_path, "a.yml", BASE)
    write(tmp_path, "b.yml", OVERRIDE + """
    secrets:
      pw: {file: ./pw.txt}
    x-unused: {a: 1}
    """)
    write(tmp_path, "c.yml", """
        services:
          web:
            env_file: web.env
            environment: {PRICE: "$$5 ${TAG:-x}", HOME}
            secrets: [pw]
            healthcheck: {test: "true", interval: 1m30s}
            deploy: {resources: {limits: {memory: 64M}}}
        """)
    paths = [Path("a.yml"), Path("b.yml"), Path("c.yml")]
    env = {"HOME": "/root"}
    original = load_stack(paths, "app", env)
    text = render_config(paths, "app", env)
    assert "x-unused" not in text and "$$5 x" in text
    (tmp_path / "elsewhere").mkdir()
    rendered = write(tmp_path, "elsewhere/rendered.yml", text)
    again = load_stack([rendered], "app", {})
    for kind in ("services", "networks", "secrets", "configs"):
        assert getattr(again, kind) == getattr(original, kind), kind
    assert render_config([rendered], "app", {}) == text


def test_render_hello_example() -> None:
    example = Path(__file__).parents[2] / "examples" / "hello" / "stack.yml"
    stack = load_stack([example], "hello", {})
    web = stack.services[0]
    assert web.name == "hello_web" and web.replicated.replicas == 3
    assert web.task.container.image == "busybox"
    assert [(p.published_port, p.target_port) for p in web.endpoint.ports] == [(8080, 80)]
    script = web.task.container.args[-1]
    assert 'echo "hello from $(hostname)" > /www/index.html' in script
    assert "httpd -f -p 80 -h /www" in script and "mkdir -p /www" in script
    assert stack.warnings == []
