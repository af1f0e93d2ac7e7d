"""``orders.Orders``: a gRPC service whose answers carry the noise real ones have, compiled at set-up.

Beside shop.proto (tests/grpc_fixtures/shop.proto) it has what a shop's does not: a ``map``, a
packed repeated scalar, a ``google.protobuf.Timestamp``, a double. ``compile_orders(out_dir)`` runs
``grpc_tools.protoc`` into a directory of the caller's and imports ``orders_pb2`` /
``orders_pb2_grpc`` from there, with ``orders.desc`` (a FileDescriptorSet with imports) beside them.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

ORDERS_PROTO = """\
syntax = "proto3";
package orders;
import "google/protobuf/timestamp.proto";

enum State { STATE_UNKNOWN = 0; OPEN = 1; SHIPPED = 2; CANCELLED = 3; }

message Line { string sku = 1; int32 qty = 2; int64 price_cents = 3; }

message Order {
  string id = 1;
  State state = 2;
  repeated Line lines = 3;
  map<string, string> labels = 4;
  int64 created_at_unix_ms = 5;
  string request_id = 6;
  repeated int32 tags = 7;
  google.protobuf.Timestamp served_at = 8;
  double total = 9;
}

message GetOrderRequest { string id = 1; }
message ListOrdersRequest { string customer = 1; int32 limit = 2; }
message UploadSummary { int32 accepted = 1; google.protobuf.Timestamp processed_at = 2; string request_id = 3; }

service Orders {
  rpc GetOrder(GetOrderRequest) returns (Order);
  rpc ListOrders(ListOrdersRequest) returns (stream Order);
  rpc UploadOrders(stream Order) returns (UploadSummary);
  rpc Track(stream GetOrderRequest) returns (stream Order);
}
"""

SERVICE = "/orders.Orders/"


@dataclass(frozen=True, slots=True)
class Compiled:
    pb2: ModuleType
    pb2_grpc: ModuleType
    descriptor_set: Path


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load generated module {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # orders_pb2_grpc imports orders_pb2 by name
    spec.loader.exec_module(module)
    return module


def compile_orders(out: Path) -> Compiled:
    """Compile the proto into ``out`` and import it (once per process: protobuf registers a file once)."""
    out.mkdir(parents=True, exist_ok=True)
    descriptor_set = out / "orders.desc"
    import grpc_tools
    from grpc_tools import protoc

    (out / "orders.proto").write_text(ORDERS_PROTO)
    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    status = protoc.main(
        [
            "grpc_tools.protoc", f"-I{out}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}",
            f"--descriptor_set_out={descriptor_set}", "--include_imports", str(out / "orders.proto"),
        ]
    )  # fmt: skip
    if status != 0:
        raise RuntimeError(f"protoc failed ({status}) compiling orders.proto")
    if "orders_pb2" in sys.modules and "orders_pb2_grpc" in sys.modules:
        return Compiled(sys.modules["orders_pb2"], sys.modules["orders_pb2_grpc"], descriptor_set)
    return Compiled(
        _load("orders_pb2", out / "orders_pb2.py"), _load("orders_pb2_grpc", out / "orders_pb2_grpc.py"), descriptor_set
    )
