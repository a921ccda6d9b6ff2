"""Building blocks shared by problems: models and losses with hand-derived derivatives."""
