"""The bottom layer: mesh and sharding rules, tokenizers, bundled assets, small I/O helpers.

Nothing here imports another merg_jax package.
"""
