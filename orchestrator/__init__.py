"""deploy: vLLM-Ascend bring-up on Ascend NPU clusters over SSH."""
__version__ = "0.1.0"
