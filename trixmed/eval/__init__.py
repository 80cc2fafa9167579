"""Evaluation: SafeDrug-style metrics, the patient bootstrap and predictions files."""
