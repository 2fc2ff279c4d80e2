"""A motion planner for ManiSkill2's Panda, driving the env in `pd_joint_pos`.

mplib plans on the same URDF/SRDF the env's agent loads; its joint-space paths are executed as
absolute joint-position targets, one per control step, with the gripper command held (1 open, -1 shut).
"""

from __future__ import annotations

import mplib
import numpy as np
import sapien.core as sapien
from mani_skill2 import format_path

OPEN, CLOSED = 1.0, -1.0


class PlanningFailed(RuntimeError):
    """No path found (IK or screw motion failed): the attempt is dropped."""


class PandaPlanner:
    def __init__(self, env, joint_vel_limit: float = 1.2, joint_acc_limit: float = 1.5,
                 wrist_vel_limit: float = 1.8, wrist_acc_limit: float = 4.0):
        self.env = env  # the wrapped env (so RecordEpisode sees every step)
        self.base_env = env.unwrapped
        assert self.base_env.control_mode == "pd_joint_pos", self.base_env.control_mode
        agent = self.base_env.agent
        self.robot = agent.robot
        # The last joint only turns the hand; letting it turn faster (Panda's own limit is 2.61 rad/s)
        # saves many steps when a grasp needs the hand rotated by up to half a turn.
        self.planner = self._make_planner(np.array([joint_vel_limit] * 6 + [wrist_vel_limit]),
                                          np.array([joint_acc_limit] * 6 + [wrist_acc_limit]))
        self.gripper = OPEN
        self.last = None  # (obs, reward, terminated, truncated, info) of the latest step
        self.steps = 0

    def _make_planner(self, vel_limits: np.ndarray, acc_limits: np.ndarray):
        urdf = format_path(self.base_env.agent.config.urdf_path)
        planner = mplib.Planner(
            urdf=urdf,
            srdf=urdf.replace(".urdf", ".srdf"),
            user_link_names=[link.get_name() for link in self.robot.get_links()],
            user_joint_names=[joint.get_name() for joint in self.robot.get_active_joints()],
            move_group="panda_hand_tcp",
            joint_vel_limits=vel_limits,
            joint_acc_limits=acc_limits,
        )
        base = self.robot.pose
        planner.set_base_pose(np.concatenate([base.p, base.q]))
        return planner

    # -- execution ----------------------------------------------------------------------------- #
    def step(self, arm_qpos) -> tuple:
        self.last = self.env.step(np.append(arm_qpos, self.gripper))
        self.steps += 1
        return self.last

    def follow(self, plan: dict, settle_steps: int = 0) -> tuple:
        path = plan["position"]
        if len(path) == 0:  # already there
            path = [self.robot.get_qpos()[:7]]
        for i in range(len(path) + settle_steps):
            self.step(path[min(i, len(path) - 1)])
        return self.last

    def set_gripper(self, state: float, steps: int = 6) -> tuple:
        self.gripper = state
        hold = self.robot.get_qpos()[:7]
        for _ in range(steps):
            self.step(hold)
        return self.last

    # -- planning ------------------------------------------------------------------------------ #
    def _goal(self, pose: sapien.Pose) -> np.ndarray:
        return np.concatenate([pose.p, pose.q])

    def plan_screw(self, pose: sapien.Pose) -> dict:
        """A straight-line (screw) motion of the TCP to `pose`; two tries, as IK restarts are random."""
        for _ in range(2):
            plan = self.planner.plan_screw(self._goal(pose), self.robot.get_qpos(),
                                           time_step=self.base_env.control_timestep)
            if plan["status"] == "Success":
                return plan
        raise PlanningFailed(f"screw motion: {plan['status']}")

    def plan_rrt(self, pose: sapien.Pose) -> dict:
        plan = self.planner.plan_qpos_to_pose(self._goal(pose), self.robot.get_qpos(),
                                              time_step=self.base_env.control_timestep, wrt_world=True)
        if plan["status"] != "Success":
            raise PlanningFailed(f"RRT: {plan['status']}")
        return plan

    def move(self, pose: sapien.Pose, settle_steps: int = 0) -> tuple:
        """A screw motion if one is found, RRT otherwise."""
        try:
            plan = self.plan_screw(pose)
        except PlanningFailed:
            plan = self.plan_rrt(pose)
        return self.follow(plan, settle_steps)


def box_grasp_pose(agent, center, half_sizes, rotation, approaching=(0, 0, -1), finger_depth=0.025,
                   prefer_closing=None) -> sapien.Pose:
    """A top-down grasp of a box (centre, half sizes, 3x3 world rotation of its axes).

    The fingers close along the box's shorter horizontal axis (the one closest to `prefer_closing`
    when the two are about equal), and the TCP sits `finger_depth` below the top face.
    """
    approaching = np.asarray(approaching, dtype=float)
    axes = np.asarray(rotation)
    extents = 2 * np.asarray(half_sizes)
    order = np.argsort(np.abs(approaching @ axes))  # last: the axis along the approach
    up, side_axes = order[-1], order[:2]
    side_axes = side_axes[np.argsort(extents[side_axes])]
    a, b = side_axes
    if prefer_closing is not None and 0.99 < extents[a] / extents[b] < 1.01:
        if abs(prefer_closing @ axes[:, a]) < abs(prefer_closing @ axes[:, b]):
            a, b = b, a
    closing = axes[:, a].copy()
    if prefer_closing is not None and prefer_closing @ closing < 0:
        closing = -closing
    closing -= (approaching @ closing) * approaching
    closing /= np.linalg.norm(closing)
    half_height = extents[up] / 2
    grasp_center = np.asarray(center) + approaching * (-half_height + min(finger_depth, half_height))
    return agent.build_grasp_pose(approaching, closing, grasp_center)


def yaw(pose: sapien.Pose, angle: float) -> sapien.Pose:
    """Rotate a TCP pose about its own approach (z) axis."""
    return pose * sapien.Pose(q=[np.cos(angle / 2), 0, 0, np.sin(angle / 2)])
