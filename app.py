"""KOSMOS-2 Gradio demo, as Hugging Face Spaces runs it: ``python app.py [--tiny] [--port P] [--mcp] ...``
(see ``--help``). The app itself is :mod:`kosmos2.ui`, built from the task table and the settings spec."""

import sys

# ZeroGPU: `spaces` must be imported before torch, which kosmos2 imports
try:
    import spaces  # noqa: F401
except ImportError:
    pass

from kosmos2.ui.hosting import ON_SPACES
from kosmos2.ui.server import build_demo, main

if __name__ == "__main__":
    sys.exit(main())
else:  # imported (by Spaces' or Gradio's reloader, or tests): a bad KOSMOS2_* setting raises SettingError here
    demo = build_demo(cache_examples=ON_SPACES, preload=ON_SPACES)
