"""Where a stack file went wrong: marks, errors, warnings, and the collector that gathers them.

Policy: every finding names the file, the line and the dotted key path, so that a user can
jump straight to it. Conversion collects every error it can find before giving up, and a stack
with any error is rejected whole (nothing half-built is returned).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyswarm.common.errors import InvalidArgument


@dataclass(frozen=True)
class Mark:
    """A place in a stack file; line 0 means the file as a whole."""

    file: str
    line: int


@dataclass(frozen=True)
class StackError:
    file: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class StackInvalid(InvalidArgument):
    """The stack files have one or more errors; ``errors`` lists them in file order."""

    def __init__(self, errors: list[StackError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


@dataclass
class Report:
    """Collects errors and warnings while a stack is read and converted."""

    errors: list[StackError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def error(self, mark: Mark, key: str, message: str) -> None:
        finding = StackError(mark.file, mark.line, key, message)
        if finding not in self.errors:
            self.errors.append(finding)

    def warn(self, mark: Mark, key: str, message: str) -> None:
        text = str(StackError(mark.file, mark.line, key, message))
        if text not in self.warnings:
            self.warnings.append(text)

    def raise_if_errors(self) -> None:
        if self.errors:
            files = list(dict.fromkeys(e.file for e in self.errors))
            raise StackInvalid(sorted(self.errors, key=lambda e: (files.index(e.file), e.line)))
