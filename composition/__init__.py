"""The composition engine: experts, routed low-rank deltas, merge methods, batched generation. Never imports gradio."""
