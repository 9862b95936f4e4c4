"""Generated protobuf and gRPC stubs of the mtserve.v1 API (services/gen_protos.py; do not edit)."""
