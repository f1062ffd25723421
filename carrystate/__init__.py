"""carrystate: recurrent PPO with exact, carried, segment-detached policy state."""

__version__ = "0.1.0"
