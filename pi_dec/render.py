"""Pick the Vulkan device SAPIEN renders with: the NVIDIA driver when present, Mesa's lavapipe (CPU)
otherwise.

SAPIEN 2.2.2 always enables VK_KHR_external_semaphore_fd, which lavapipe lacks, so on CPU we also
enable a tiny Vulkan layer (`pi_dec/vulkan/pidec_layer.c`) that declares that extension to the
loader and drops unsupported extensions from vkCreateDevice. Everything here works through
environment variables, so it must run before `sapien` is imported; `import pi_dec` does it.

Override the automatic choice with PI_DEC_RENDER=gpu (leave Vulkan alone) or PI_DEC_RENDER=cpu
(force lavapipe). `scripts/setup.sh` builds the layer ahead of time (`build_layer()`).
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

RENDER_ENV_VAR = "PI_DEC_RENDER"
LAYER_NAME = "VK_LAYER_PIDEC_drop_missing_extensions"
LAYER_SOURCE = Path(__file__).parent / "vulkan" / "pidec_layer.c"
LAYER_MANIFEST = Path(__file__).parent / "vulkan" / "pidec_layer.json"
ICD_DIRS = ("/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d")
MESA_HINT = (
    "On Debian 12 install a recent Mesa: add 'deb http://deb.debian.org/debian bookworm-backports main' "
    "to apt's sources, then `apt-get install -t bookworm-backports mesa-vulkan-drivers libvulkan1 libvulkan-dev`."
)


@dataclass
class RenderChoice:
    mode: str  # "gpu" (system Vulkan, e.g. NVIDIA), "cpu" (lavapipe + layer) or "user" (user's VK_ICD_FILENAMES)
    reason: str
    icd_file: str | None = None
    layer_dir: str | None = None


_choice: RenderChoice | None = None


def find_icd(pattern: str) -> str | None:
    for folder in ICD_DIRS:
        hits = sorted(glob.glob(os.path.join(folder, pattern)))
        if hits:
            return hits[0]
    return None


def layer_cache_dir() -> Path:
    """Where the built layer lives: keyed by the source's hash, so an edit rebuilds it."""
    digest = hashlib.sha256(LAYER_SOURCE.read_bytes() + LAYER_MANIFEST.read_bytes()).hexdigest()[:12]
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pi_dec"
    return root / f"vk_layer-{digest}"


def build_layer(verbose: bool = False) -> Path:
    """Compile the layer (once per source version) and return the folder holding it and its manifest."""
    out_dir = layer_cache_dir()
    if (out_dir / "pidec_layer.json").exists() and (out_dir / "libpidec_vk_layer.so").exists():
        return out_dir
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("pi_dec: building the lavapipe Vulkan layer needs a C compiler: `apt-get install gcc`.")
    if not Path("/usr/include/vulkan/vk_layer.h").exists():
        raise RuntimeError("pi_dec: building the lavapipe Vulkan layer needs Vulkan headers: `apt-get install libvulkan-dev`.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Build in a temp folder and rename, so parallel processes never see a half-written layer.
    tmp_dir = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=".build-"))
    cmd = [compiler, "-shared", "-fPIC", "-O2", "-fvisibility=hidden", "-o",
           str(tmp_dir / "libpidec_vk_layer.so"), str(LAYER_SOURCE), "-lpthread"]
    if verbose:
        print(" ".join(cmd))
    subprocess.run(cmd, check=True)
    shutil.copy(LAYER_MANIFEST, tmp_dir / "pidec_layer.json")
    try:
        tmp_dir.rename(out_dir)
    except OSError:  # another process won the race; use its copy
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_dir


def _prepend_path(var: str, value: str) -> None:
    parts = [p for p in os.environ.get(var, "").split(os.pathsep) if p and p != value]
    os.environ[var] = os.pathsep.join([value] + parts)


def choose() -> RenderChoice:
    """Decide between GPU and CPU rendering without changing anything."""
    requested = os.environ.get(RENDER_ENV_VAR, "auto").lower()
    if requested not in ("auto", "gpu", "cpu"):
        raise ValueError(f"{RENDER_ENV_VAR}={requested!r}: use 'auto', 'gpu' or 'cpu'.")
    if requested == "gpu":
        return RenderChoice("gpu", f"{RENDER_ENV_VAR}=gpu")
    if requested == "auto":
        if os.environ.get("VK_ICD_FILENAMES") or os.environ.get("VK_DRIVER_FILES"):
            return RenderChoice("user", "VK_ICD_FILENAMES/VK_DRIVER_FILES set by the user")
        nvidia = find_icd("nvidia_icd*.json")
        if nvidia:
            return RenderChoice("gpu", f"NVIDIA Vulkan driver found ({nvidia})", icd_file=nvidia)
    icd = find_icd("lvp_icd*.json")
    reason = f"{RENDER_ENV_VAR}=cpu" if requested == "cpu" else "no NVIDIA Vulkan driver found"
    return RenderChoice("cpu", reason, icd_file=icd)


def configure() -> RenderChoice:
    """Set the Vulkan environment for SAPIEN (idempotent). Must run before `import sapien`."""
    global _choice
    if _choice is not None:
        return _choice
    choice = choose()
    if choice.mode == "cpu":
        if "sapien" in sys.modules:
            print("pi_dec: warning: sapien was imported before pi_dec; CPU rendering may not be set up.",
                  file=sys.stderr)
        if choice.icd_file is None:
            choice.reason += "; lavapipe is not installed either (rendering will fail). " + MESA_HINT
        else:
            os.environ["VK_ICD_FILENAMES"] = choice.icd_file  # older loaders
            os.environ["VK_DRIVER_FILES"] = choice.icd_file  # newer loaders
            try:
                choice.layer_dir = str(build_layer())
            except (RuntimeError, subprocess.CalledProcessError, OSError) as err:
                choice.reason += f"; layer unavailable ({err})"
            else:
                _prepend_path("VK_LAYER_PATH", choice.layer_dir)
                layers = [x for x in os.environ.get("VK_INSTANCE_LAYERS", "").split(os.pathsep) if x]
                if LAYER_NAME not in layers:
                    os.environ["VK_INSTANCE_LAYERS"] = os.pathsep.join(layers + [LAYER_NAME])
    if choice.mode in ("cpu", "gpu"):
        os.environ[RENDER_ENV_VAR] = choice.mode  # env worker processes inherit the same choice
    _choice = choice
    return choice


def vulkan_devices() -> list[str]:
    """Names of the Vulkan devices the loader offers this process (after `configure`), via libvulkan."""
    import ctypes

    try:
        vk = ctypes.CDLL("libvulkan.so.1")
    except OSError:
        return []

    class InstanceCreateInfo(ctypes.Structure):
        _fields_ = [("sType", ctypes.c_int), ("pNext", ctypes.c_void_p), ("flags", ctypes.c_uint32),
                    ("pApplicationInfo", ctypes.c_void_p), ("enabledLayerCount", ctypes.c_uint32),
                    ("ppEnabledLayerNames", ctypes.c_void_p), ("enabledExtensionCount", ctypes.c_uint32),
                    ("ppEnabledExtensionNames", ctypes.c_void_p)]

    info = InstanceCreateInfo(sType=1)  # VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO
    instance = ctypes.c_void_p()
    if vk.vkCreateInstance(ctypes.byref(info), None, ctypes.byref(instance)) != 0:
        return []
    count = ctypes.c_uint32(0)
    vk.vkEnumeratePhysicalDevices(instance, ctypes.byref(count), None)
    handles = (ctypes.c_void_p * count.value)()
    vk.vkEnumeratePhysicalDevices(instance, ctypes.byref(count), handles)
    names = []
    for handle in handles[: count.value]:
        props = ctypes.create_string_buffer(4096)  # VkPhysicalDeviceProperties is < 1 KiB
        vk.vkGetPhysicalDeviceProperties(ctypes.c_void_p(handle), props)
        names.append(props.raw[20:276].split(b"\0", 1)[0].decode(errors="replace"))  # deviceName
    vk.vkDestroyInstance(instance, None)
    return names
