"""Running dlspec models: the CLI, onnxruntime sessions, files."""
