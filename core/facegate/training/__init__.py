"""Training face embedders: losses, samplers, and the pieces a training loop is built from."""
