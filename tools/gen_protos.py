"""Generate the Python stubs for protos/genserve/v1 into the client package.

`python tools/gen_protos.py` rewrites them; `--check` generates into a
temporary folder and exits 1 when the checked-in stubs differ.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_ROOT = ROOT / "clients" / "python" / "src"
PACKAGE = Path("genserve") / "v1"


def generate(out_root: Path) -> None:
    """Run protoc over every .proto in the package, writing under out_root."""
    protos = sorted((PROTO_ROOT / PACKAGE).glob("*.proto"))
    (out_root / PACKAGE).mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(str(p.relative_to(PROTO_ROOT)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def stub_files(root: Path) -> list[str]:
    """The generated files under root, relative to the package folder."""
    folder = root / PACKAGE
    return sorted(p.name for p in folder.glob("*_pb2*.py*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args()
    if not args.check:
        for name in stub_files(OUT_ROOT):
            (OUT_ROOT / PACKAGE / name).unlink()
        generate(OUT_ROOT)
        print(f"wrote {', '.join(stub_files(OUT_ROOT))}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh, current = stub_files(Path(tmp)), stub_files(OUT_ROOT)
        _, mismatch, errors = filecmp.cmpfiles(
            Path(tmp) / PACKAGE, OUT_ROOT / PACKAGE, fresh, shallow=False
        )
        if fresh != current or mismatch or errors:
            print("stale stubs: run `make proto` and commit the result", file=sys.stderr)
            print(f"  differ: {sorted(set(mismatch + errors) | set(fresh) ^ set(current))}")
            return 1
    print("stubs are current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
