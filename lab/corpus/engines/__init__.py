"""One module per speech engine; each exposes `synthesize_<engine>(voice, words, rate) -> Synthesis`."""
