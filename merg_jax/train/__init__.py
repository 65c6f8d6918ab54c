"""The training runtime shared by every system: optimizer, checkpoints, metrics, the loop."""
