"""safety-subspaces: does safety alignment live in its own linear subspace of weights or activations?"""

__version__ = "0.1.0"
