"""Adapters that run established map matchers (Valhalla, fastmm) and ours on identical traces, for the benchmark."""
