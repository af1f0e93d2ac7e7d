"""The suite's gRPC fixture: `shop.proto` (service `shop.Catalog`) compiled at test set-up.

`compile_shop(out_dir)` runs `grpc_tools.protoc` into a directory of the caller's (a pytest tmp
dir) and imports the generated `shop_pb2` / `shop_pb2_grpc` modules from there; nothing is
generated into the source tree. It also writes `shop.desc`, a serialized FileDescriptorSet (with
imports), for code that reads descriptors rather than generated classes.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

PROTO_DIR = Path(__file__).resolve().parent
SHOP_PROTO = PROTO_DIR / "shop.proto"


@dataclass(frozen=True, slots=True)
class CompiledShop:
    """The generated modules and the descriptor set of shop.proto."""

    pb2: ModuleType
    pb2_grpc: ModuleType
    descriptor_set: Path
    out_dir: Path


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load generated module {path}")
    module = importlib.util.module_from_spec(spec)
    # The generated *_pb2_grpc module does `import shop_pb2`: it must be findable by that name.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def compile_shop(out_dir: Path) -> CompiledShop:
    """Compile shop.proto into `out_dir` and import the result (idempotent per process: protobuf
    refuses to register the same file twice, so a second call reuses the first import)."""
    from grpc_tools import protoc  # dev dependency; imported here so collection never needs it

    out_dir.mkdir(parents=True, exist_ok=True)
    descriptor_set = out_dir / "shop.desc"
    if "shop_pb2" in sys.modules and "shop_pb2_grpc" in sys.modules:
        pb2, pb2_grpc = sys.modules["shop_pb2"], sys.modules["shop_pb2_grpc"]
        if not descriptor_set.exists():
            _run_protoc(protoc, out_dir, descriptor_set)
        return CompiledShop(pb2, pb2_grpc, descriptor_set, out_dir)
    _run_protoc(protoc, out_dir, descriptor_set)
    pb2 = _load("shop_pb2", out_dir / "shop_pb2.py")
    pb2_grpc = _load("shop_pb2_grpc", out_dir / "shop_pb2_grpc.py")
    return CompiledShop(pb2, pb2_grpc, descriptor_set, out_dir)


def _run_protoc(protoc: ModuleType, out_dir: Path, descriptor_set: Path) -> None:
    import grpc_tools

    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--descriptor_set_out={descriptor_set}",
        "--include_imports",
        str(SHOP_PROTO),
    ]
    status = protoc.main(args)
    if status != 0:
        raise RuntimeError(f"protoc failed ({status}) compiling {SHOP_PROTO}")
