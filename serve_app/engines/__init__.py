"""Engines behind the model servers: the protocol, the CPU reference engine and the vLLM engine."""
