"""Generate the Python stubs for protos/ into the client package.

Two sets: genserve's own API (protos/genserve/v1 -> genserve.v1) and Triton's
Open Inference Protocol protos, vendored unchanged (protos/vendor/triton ->
genserve.inference). Triton's files import each other by bare file name
("model_config.proto"), so protoc writes top-level imports
(`import model_config_pb2`); those are rewritten into package imports, as
tritonclient does with the same files.

`python tools/gen_protos.py` rewrites them; `--check` generates into a
temporary folder and exits 1 when the checked-in stubs differ.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_ROOT = ROOT / "clients" / "python" / "src"


@dataclass(frozen=True)
class StubSet:
    """One folder of .proto files and the Python package its stubs go to."""

    include: Path
    """The protoc include root the files' import paths are relative to."""
    protos: Path
    """The folder of .proto files, inside `include`."""
    package: Path
    """The stubs' package folder, relative to the output root."""
    flat: bool
    """Whether the files sit at the include root, so their stubs import each other
    top-level and need rewriting into package imports."""

    def generate(self, out_root: Path) -> None:
        """Run protoc over the set's .proto files, writing under out_root/package."""
        protos = sorted(self.protos.glob("*.proto"))
        target = out_root if not self.flat else out_root / self.package
        (out_root / self.package).mkdir(parents=True, exist_ok=True)
        include = Path(protoc.__file__).parent / "_proto"
        args = [
            "protoc",
            f"-I{self.include}",
            f"-I{include}",
            f"--python_out={target}",
            f"--pyi_out={target}",
            f"--grpc_python_out={target}",
            *(str(p.relative_to(self.include)) for p in protos),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {self.protos.relative_to(ROOT)}")
        if self.flat:
            self._package_imports(out_root / self.package, [p.stem for p in protos])

    def _package_imports(self, folder: Path, stems: list[str]) -> None:
        """`import x_pb2 as y` -> `from <package> import x_pb2 as y`, for this set's modules."""
        dotted = ".".join(self.package.parts)
        names = "|".join(re.escape(f"{stem}_pb2") for stem in stems)
        pattern = re.compile(rf"^import ({names}) as (\w+)$", re.MULTILINE)
        for path in stub_paths(folder):
            text = path.read_text(encoding="utf-8")
            path.write_text(pattern.sub(rf"from {dotted} import \1 as \2", text), encoding="utf-8")

    def stub_files(self, root: Path) -> list[str]:
        """The generated files under root, relative to the package folder."""
        return sorted(p.name for p in stub_paths(root / self.package))


def stub_paths(folder: Path) -> list[Path]:
    return sorted(folder.glob("*_pb2*.py*"))


STUB_SETS = (
    StubSet(PROTO_ROOT, PROTO_ROOT / "genserve" / "v1", Path("genserve") / "v1", flat=False),
    StubSet(
        PROTO_ROOT / "vendor" / "triton",
        PROTO_ROOT / "vendor" / "triton",
        Path("genserve") / "inference",
        flat=True,
    ),
)


def write() -> None:
    """Replace every checked-in stub with a fresh one."""
    for stubs in STUB_SETS:
        for name in stubs.stub_files(OUT_ROOT):
            (OUT_ROOT / stubs.package / name).unlink()
        stubs.generate(OUT_ROOT)
        print(f"wrote {stubs.package}: {', '.join(stubs.stub_files(OUT_ROOT))}")


def stale(tmp: Path) -> list[str]:
    """Generate every set under tmp; the stub files that differ from the checked-in ones."""
    differ: set[str] = set()
    for stubs in STUB_SETS:
        stubs.generate(tmp)
        fresh, current = stubs.stub_files(tmp), stubs.stub_files(OUT_ROOT)
        _, mismatch, errors = filecmp.cmpfiles(
            tmp / stubs.package, OUT_ROOT / stubs.package, fresh, shallow=False
        )
        names = set(mismatch + errors) | (set(fresh) ^ set(current))
        differ |= {str(stubs.package / name) for name in names}
    return sorted(differ)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args()
    if not args.check:
        write()
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        differ = stale(Path(tmp))
    if differ:
        print("stale stubs: run `make proto` and commit the result", file=sys.stderr)
        print(f"  differ: {differ}")
        return 1
    print("stubs are current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
