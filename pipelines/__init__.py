"""KFP pipelines: pure factories and their compiled YAML."""
