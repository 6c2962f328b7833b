"""Shared set-up for the suite."""

import _gloo

_gloo.use_loopback()
