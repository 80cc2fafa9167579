"""TRIXMED: triage-routed interpretable mixture-of-LoRA-experts medication recommendation."""

__version__ = "0.1.0"
