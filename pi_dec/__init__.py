"""pi-dec: shared plumbing for the Policy Decorator scripts in `offline/` and `online/`.

Importing the package sets up Vulkan for SAPIEN (GPU when an NVIDIA driver is present, Mesa's
lavapipe on CPU otherwise), so import it before `mani_skill2` or `sapien`. It does not import torch.
"""

import contextlib
import io
import sys
import warnings

from pi_dec.render import configure as _configure_render

# sapien 2.2.2 imports pkg_resources (hence setuptools<82); its deprecation warning is noise here.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

# gymnasium imports gymnasium-robotics (its plugin) and that prints a notice about the Dense-v1 Adroit
# rewards, which we do not use, on every import; anything else it prints still reaches stderr.
with contextlib.redirect_stderr(io.StringIO()) as _printed:
    import gymnasium  # noqa: F401
sys.stderr.write("".join(line for line in _printed.getvalue().splitlines(keepends=True)
                         if "reward functions were updated" not in line))

__version__ = "0.1.0"
RENDER = _configure_render()
