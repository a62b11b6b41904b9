"""`engine.context`: the one place `num_ctx` is decided, for the daemon and the SDK alike."""

from mlxollama.engine.context import UNKNOWN_LIMIT, context_window


def test_the_request_or_the_default_within_the_models_limit():
    assert context_window({}, 2048, 8192) == 2048
    assert context_window({"num_ctx": 4096}, 2048, 8192) == 4096
    assert context_window({"num_ctx": 65536}, 2048, 8192) == 8192


def test_a_model_that_does_not_say_its_context_is_held_to_one_limit():
    """The SDK loads such a model with UNKNOWN_LIMIT as its context length; the daemon used
    the configured default instead (8192 here), so the two cut answers at different places."""
    assert context_window({}, 8192, None) == UNKNOWN_LIMIT
    assert context_window({"num_ctx": 32768}, 8192, 0) == UNKNOWN_LIMIT
    assert context_window({}, 2048, None) == 2048
