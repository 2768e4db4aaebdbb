import pytest

from pyswarm.common.errors import InvalidArgument
from pyswarm.common.units import format_size, parse_cpus, parse_signal, parse_size


@pytest.mark.parametrize(
    "text,expected",
    [("64m", 64 << 20), ("64M", 64 << 20), ("1g", 1 << 30), ("512", 512), ("4k", 4096),
     ("1.5g", int(1.5 * (1 << 30))), ("10mb", 10 << 20), ("2GiB", 2 << 30)],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "m", "-1m", "12x", "1.2.3m", "lots"])
def test_parse_size_rejects_with_the_value(text: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid memory"):
        parse_size(text, what="memory")


def test_parse_cpus() -> None:
    assert parse_cpus("0.5") == 0.5
    for bad in ["0", "-1", "abc", "nan", "inf"]:
        with pytest.raises(InvalidArgument, match="--cpus"):
            parse_cpus(bad)


def test_parse_signal() -> None:
    assert parse_signal("SIGTERM") == 15
    assert parse_signal("kill") == 9
    assert parse_signal("2") == 2
    for bad in ["SIGNOPE", "0", "999", ""]:
        with pytest.raises(InvalidArgument):
            parse_signal(bad)


def test_format_size() -> None:
    assert format_size(0) == "0B"
    assert format_size(4_190_000) == "4.19MB"
