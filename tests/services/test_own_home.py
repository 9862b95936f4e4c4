"""A server started with settings of its own (another home: its own CA and
tokens) makes its own outgoing calls with those settings too: the inference
service's watch of the registry once used this process's default home, so
with any other home its TLS handshake failed and it never served."""

from __future__ import annotations

from mtserve_api.inference import InferenceClient

from .conftest import make_settings, sample, start_stack, wait_for


def test_a_stack_on_its_own_home_serves(tmp_path, hotel, tiny_llama_dir):
    settings = make_settings(tmp_path, home=str(tmp_path / "own-home"))
    stack = start_stack(settings, hotel, [tiny_llama_dir], inference=False)
    try:
        stack.start_inference()
        wait_for(lambda: stack.inference.core.serving is not None and stack.inference.core.ready.is_set(), "inference to follow the registry")
        with InferenceClient(stack.inference_address, timeout=30, settings=settings) as client:
            assert client.classify("ec", sample("email")).checkpoint_id == "tiny-llama"
    finally:
        stack.stop()
