"""File -> validated tensor -> encoder features, one module per modality. Never imports gradio."""
