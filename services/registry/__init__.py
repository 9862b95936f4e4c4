"""The task registry: versioned task definitions, checkpoints and routes
(store.py, plain Python over SQLAlchemy), served over gRPC (server.py) and
reached through client.py."""
