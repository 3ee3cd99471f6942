"""Regenerate the committed Python code of the `.proto` files in this package.

`python -m cyberstar.proto.generate` rewrites the files in place; `generate(out_dir)` writes them
elsewhere (the regeneration test compares the two). Needs grpcio-tools (a dev dependency).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# Protos import each other as `cyberstar/proto/x.proto`, so generated modules import
# `cyberstar.proto.x_pb2`: the include root is the directory holding the `cyberstar` package.
INCLUDE_ROOT = PACKAGE_DIR.parent.parent
# each proto, and whether it declares a service (then it gets gRPC code too)
PROTOS = {"sc.proto": True, "p4rt_batch.proto": False}


def generate(out_root: Path = INCLUDE_ROOT) -> list[Path]:
    """Write `<out_root>/cyberstar/proto/*_pb2*.py[i]`; return the written paths."""
    import grpc_tools
    from grpc_tools import protoc  # dev dependency: imported only when regenerating

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    out_root.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for proto, service in PROTOS.items():
        rel = f"cyberstar/proto/{proto}"
        grpc_out = [f"--grpc_python_out={out_root}"] if service else []
        rc = protoc.main(
            [
                "protoc",
                f"-I{INCLUDE_ROOT}",
                f"-I{well_known}",
                f"--python_out={out_root}",
                f"--pyi_out={out_root}",
                *grpc_out,
                rel,
            ]
        )
        if rc != 0:
            raise RuntimeError(f"protoc failed on {rel} (exit {rc})")
        stem = out_root / "cyberstar" / "proto" / proto.removesuffix(".proto")
        written += [Path(f"{stem}_pb2.py"), Path(f"{stem}_pb2.pyi")]
        if service:
            written.append(Path(f"{stem}_pb2_grpc.py"))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    for path in generate():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
