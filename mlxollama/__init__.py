"""mlxollama: Ollama's workflow and API with Apple's MLX as the inference engine."""

__version__ = "0.1.0"
