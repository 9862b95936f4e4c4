"""The inference service: serves the routed tasks from loaded checkpoints with
dynamic batching (core.py, batcher.py; plain Python), follows the registry
(watcher.py, state.py), over gRPC (server.py), reached through client.py."""
