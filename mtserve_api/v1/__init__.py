"""Generated protobuf and gRPC stubs of the mtserve.v1 API (mtserve_api/gen_protos.py; do not edit)."""
