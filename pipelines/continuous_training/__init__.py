"""The continuous-training pipeline: ingest → features → train → evaluate/bless → gates → push → canary."""
