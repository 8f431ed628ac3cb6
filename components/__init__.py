"""KFP v2 components of the OSTAF pipeline: thin, typed adapters over `ostaf.steps`."""
