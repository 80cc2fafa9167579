"""EHR data: sources → one canonical dataset artifact (visits, vocabularies, DDI, splits, card)."""
