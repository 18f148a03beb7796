"""The test suite; `tests.fixtures` holds the inputs several test folders share."""
