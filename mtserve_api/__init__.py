"""The API floor, between the core and the services: the generated gRPC
stubs of the `mtserve.v1` protocol (`mtserve_api.v1`), one client per
service the rest of the tree calls (`registry`, `inference`, over the shared
`client.ServiceClient`), and every conversion between protobuf messages and
the core's domain types (`convert`). It imports the core and grpc/protobuf,
nothing else of this tree; services, trainer, batch and the CLI import it.
"""
