"""The face API's gRPC service: face.proto and the modules scripts/gen_grpc.sh generates from it."""
