"""Network modules. Parameter names follow the official checkpoints (see tests/test_checkpoint_layout.py)."""
