"""Interpretability: a patient's triage explanation (`explain`) and a run's HTML/Markdown report
(`run_report`), with the cluster coherence metrics (`coherence`) both rest on. Reads a trained run
directory; may import the pipeline and everything below it."""
