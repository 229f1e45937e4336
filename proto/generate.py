"""Generate the Python modules of the API and log formats from the .proto files.

Run `python -m proto.generate` after editing a .proto file; the generated
modules are checked in, and `tests/test_generated_code.py` fails when they are
stale. Generation uses the pinned grpcio-tools, so its output is reproducible.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_FILES = ("proto/ledger/v1/ledger.proto", "proto/wallet/v1/wallet.proto")
GRPC_FILES = ("proto/wallet/v1/wallet.proto",)


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def generate(out_dir: Path) -> None:
    """Write the generated modules for every .proto file under `out_dir`."""
    root = repo_root()
    include = str(Path(protoc.__file__).parent / "_proto")
    for proto in PROTO_FILES:
        args = [
            "grpc_tools.protoc",
            f"-I{root}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
        ]
        if proto in GRPC_FILES:
            args.append(f"--grpc_python_out={out_dir}")
        args.append(str(root / proto))
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto}")


def main() -> None:
    generate(repo_root())
    print("generated:", ", ".join(PROTO_FILES), file=sys.stderr)


if __name__ == "__main__":
    main()
