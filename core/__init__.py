"""tunelab: a local-first fine-tuning studio. `core` is the library; the CLI and the pages call into it."""
