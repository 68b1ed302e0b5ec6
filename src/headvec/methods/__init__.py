"""Method estimators built on the activation engine (fit / predict / score / save / load)."""
