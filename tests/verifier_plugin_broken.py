"""A verifier module that fails on import, for the tests of `--verifier module:function`."""

raise RuntimeError("this module is broken on purpose")
