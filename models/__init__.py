"""Attention kinds, softmax variants and the models built from them (imports torch)."""
