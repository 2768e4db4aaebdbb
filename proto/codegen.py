"""Generate the Python code for every .proto in this folder.

Run `python proto/codegen.py` after editing a .proto; the generated *_pb2.py, *_pb2.pyi and
*_pb2_grpc.py are committed. `python proto/codegen.py --check` exits non-zero when the
committed files differ from what the .proto files produce (a test runs it).
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Generated modules live in the package `pyswarm.proto`; protoc writes `import engine_pb2`,
# which only works as a top-level module, so the import is rewritten to a relative one.
_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.M)


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc

    protos = sorted(HERE.glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{HERE}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for proto in protos:  # messages only: no stub module to generate
        if "\nservice " not in proto.read_text():
            (out / f"{proto.stem}_pb2_grpc.py").unlink(missing_ok=True)
    written = sorted(p for p in out.iterdir() if p.suffix in (".py", ".pyi"))
    for path in written:
        path.write_text(_IMPORT.sub(r"from . import \1 as \2", path.read_text()))
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if generated code is stale")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        written = generate(Path(tmp))
        stale = [p.name for p in written if not (HERE / p.name).exists()
                 or not filecmp.cmp(p, HERE / p.name, shallow=False)]
        if opts.check:
            if stale:
                print("stale generated code: " + ", ".join(stale)
                      + "\nrun: python proto/codegen.py", file=sys.stderr)
                return 1
            return 0
        for p in written:
            shutil.copyfile(p, HERE / p.name)
        print("generated: " + ", ".join(p.name for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
