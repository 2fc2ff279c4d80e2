"""Procedural stand-ins for the PartNet-Mobility faucets and chairs that TurnFaucet and PushChair load.

The real models cannot be downloaded here (nor redistributed). These tiny boxes-and-spheres models
follow the same layout, so the -v2 envs reset, step and render in tests:

    <root>/partnet_mobility/dataset/<id>/mobility_cvx.urdf   (+ .obj meshes beside it)
    <root>/partnet_mobility/meta/info_<kind>_standin.json    (model json, pass as `model_json`)

They are not the real tasks: never report results obtained on them.

    python -m pi_dec.standin_assets --root /tmp/standins
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import trimesh

from pi_dec.envs import CHAIR_ONLINE_IDS, FAUCET_ONLINE_IDS


def _box(path: Path, extents, center) -> str:
    trimesh.creation.box(extents=extents).apply_translation(center).export(path)
    return path.name


def _sphere(path: Path, radius: float, center) -> str:
    trimesh.creation.icosphere(subdivisions=2, radius=radius).apply_translation(center).export(path)
    return path.name


def _link(name: str, meshes: list[tuple[str, str]]) -> str:
    """A URDF link whose visual and collision geometry are the given (visual name, mesh file) pairs."""
    parts = [f'  <link name="{name}">']
    for visual_name, mesh in meshes:
        geom = f'<geometry><mesh filename="{mesh}"/></geometry>'
        parts.append(f'    <visual name="{visual_name}"><origin xyz="0 0 0"/>{geom}</visual>')
        parts.append(f'    <collision><origin xyz="0 0 0"/>{geom}</collision>')
    parts.append("  </link>")
    return "\n".join(parts)


def _joint(name, kind, parent, child, axis="0 0 1", xyz="0 0 0", limits=None) -> str:
    limit = f'<limit lower="{limits[0]}" upper="{limits[1]}"/>' if limits else ""
    return (f'  <joint name="{name}" type="{kind}"><parent link="{parent}"/><child link="{child}"/>'
            f'<origin xyz="{xyz}"/><axis xyz="{axis}"/>{limit}</joint>')


def write_faucet(model_dir: Path) -> dict:
    """A post (static body, link_1) with a lever handle (link_0) on a vertical revolute joint."""
    model_dir.mkdir(parents=True, exist_ok=True)
    body = _box(model_dir / "body.obj", [0.06, 0.06, 0.20], [0, 0, 0.10])
    handle = _box(model_dir / "handle.obj", [0.14, 0.025, 0.025], [0.07, 0, 0.0])
    urdf = "\n".join([
        '<?xml version="1.0"?>', '<robot name="faucet_standin">',
        '  <link name="base"/>',
        _link("link_1", [("body", body)]),
        _link("link_0", [("handle", handle)]),
        _joint("joint_1", "fixed", "base", "link_1"),
        _joint("joint_0", "revolute", "link_1", "link_0", axis="0 0 1", xyz="0 0 0.215", limits=(0, 1.57)),
        "</robot>",
    ])
    (model_dir / "mobility_cvx.urdf").write_text(urdf)
    return {"scale": 1.0, "offset": [0.0, 0.0, 0.0],
            "semantics": [["link_0", "hinge", "switch"], ["link_1", "static", "faucet_base"]]}


def write_chair(model_dir: Path) -> dict:
    """An office chair: a leg plate on four wheels (continuous joints), a seat on a revolute joint."""
    model_dir.mkdir(parents=True, exist_ok=True)
    leg = _box(model_dir / "leg.obj", [0.40, 0.40, 0.04], [0, 0, 0.09])
    foot = _box(model_dir / "foot_pole.obj", [0.05, 0.05, 0.30], [0, 0, 0.26])
    seat = _box(model_dir / "seat.obj", [0.42, 0.42, 0.05], [0, 0, 0.0])
    back = _box(model_dir / "seat_back.obj", [0.04, 0.42, 0.40], [-0.19, 0, 0.22])
    links, joints = [], []
    for i, (x, y) in enumerate([(0.16, 0.16), (0.16, -0.16), (-0.16, 0.16), (-0.16, -0.16)]):
        wheel = _sphere(model_dir / f"wheel_{i}.obj", 0.035, [0, 0, 0])
        links.append(_link(f"wheel_{i}", [(f"wheel_{i}", wheel)]))
        joints.append(_joint(f"joint_wheel_{i}", "continuous", "support", f"wheel_{i}",
                             axis="0 1 0", xyz=f"{x} {y} 0.035"))
    urdf = "\n".join([
        '<?xml version="1.0"?>', '<robot name="chair_standin">',
        _link("support", [("leg", leg), ("foot", foot)]),
        _link("seat", [("seat", seat), ("seat_back", back)]),
        *links,
        _joint("joint_seat", "revolute", "support", "seat", axis="0 0 1", xyz="0 0 0.44", limits=(-3.14, 3.14)),
        *joints,
        "</robot>",
    ])
    (model_dir / "mobility_cvx.urdf").write_text(urdf)
    n_joints = 1 + len(links)
    return {"initial_qpos": [0.0] * n_joints, "position": [0.0, 0.0, 0.01],
            "rotation": [1.0, 0.0, 0.0, 0.0]}


def write_standins(root: str | Path, kind: str, model_ids=None) -> Path:
    """Write stand-in models for `kind` ('faucet' or 'chair'); return the model json's path.

    Pass `asset_root=<root>/partnet_mobility/dataset` and `model_json=<returned path>` to the env.
    """
    writer, default_ids = {"faucet": (write_faucet, FAUCET_ONLINE_IDS), "chair": (write_chair, CHAIR_ONLINE_IDS)}[kind]
    root = Path(root)
    db = {str(m): writer(root / "partnet_mobility" / "dataset" / str(m)) for m in (model_ids or default_ids)}
    meta = root / "partnet_mobility" / "meta" / f"info_{kind}_standin.json"
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps(db, indent=1))
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="folder to write partnet_mobility/ into")
    args = parser.parse_args()
    for kind in ("faucet", "chair"):
        print(f"{kind}: model_json={write_standins(args.root, kind)}")
    print(f"asset_root={Path(args.root) / 'partnet_mobility' / 'dataset'}")


if __name__ == "__main__":
    main()
