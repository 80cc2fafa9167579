"""Code-to-language: code titles and the per-sample narratives fed to language models."""
