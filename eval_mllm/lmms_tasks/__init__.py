"""lmms-eval task configs for local (offline) benchmark data; pass this folder as --include_path."""
