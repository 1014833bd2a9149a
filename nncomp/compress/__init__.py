"""Compression methods: pure functions ``Model -> Model`` that never mutate their input."""
