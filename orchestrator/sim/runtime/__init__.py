"""The simulated vLLM-Ascend runtime: programs that run ON simulated nodes (fake docker, vllm,
proxy) and the helpers they share. Everything here is stdlib-only: `deploy sim up` copies these
files into DIR/runtime/ and the simulated nodes run them with /usr/bin/python3."""
