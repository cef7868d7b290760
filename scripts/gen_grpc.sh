#!/usr/bin/env bash
# Regenerates the Python modules of the face API's gRPC service (ganray/serve/proto/face_pb2*.py)
# from ganray/serve/proto/face.proto, with grpcio-tools from the dev extra. Run it from anywhere
# after changing the .proto, and commit the result (the package imports the generated modules; they
# must import with the protobuf that `pip install ganray` brings).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
# Paths relative to the repository root, so the generated code imports `ganray.serve.proto.face_pb2`.
"$PYTHON" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. ganray/serve/proto/face.proto
echo "generated: $(ls ganray/serve/proto/face_pb2*.py* | tr '\n' ' ')"
