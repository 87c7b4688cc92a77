"""Functions, classes, lambdas and closures defined in ``__main__`` run in the kernels.

Run it from the repository root or from ``examples/``:

    python examples/main_functions.py

A ``ProcessPoolExecutor`` pickles a callable by reference (module and name), so a lambda
or a closure cannot be sent at all, and nothing defined in a notebook or an interactive
session can be found by a worker. dlexec sends callables and arguments with dill, which
serializes what ``__main__`` defines by value: the kernel needs neither this file nor
an import of it.
"""

import dataclasses
import math
import os
import pickle
import sys

try:
    from dlexec import DatalayerExecutor
except ImportError:  # a source checkout that is not installed: use the repository's copy
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
    from dlexec import DatalayerExecutor

G = 9.81  # a global of __main__, used by the remote code


@dataclasses.dataclass
class Projectile:
    """A class defined in __main__, with methods and a property."""

    angle: float  # degrees
    speed: float  # m/s
    flight_time: float = 0.0
    distance: float = 0.0

    @property
    def vx(self):
        return self.speed * math.cos(math.radians(self.angle))

    @property
    def vy(self):
        return self.speed * math.sin(math.radians(self.angle))

    def fly(self):
        self.flight_time = 2 * self.vy / G
        self.distance = self.vx * self.flight_time
        return self


def launch(projectile):
    """A function of __main__: takes an instance of a __main__ class, returns it updated."""
    projectile.fly()
    print(f"  [kernel pid {os.getpid()}] {projectile.angle:>4.0f} deg -> {projectile.distance:6.1f} m")
    return projectile


def make_scaler(factor):
    def scale(x):  # a closure over ``factor``
        return x * factor

    return scale


def pickle_check(obj):
    try:
        pickle.dumps(obj)
        return "pickled by reference: the worker must import __main__ to find it"
    except Exception as exc:  # noqa: BLE001 - what the standard pickle says
        return f"cannot be pickled: {type(exc).__name__}"


if __name__ == "__main__":
    to_feet = make_scaler(3.28084)
    height = lambda p: p.vy**2 / (2 * G)  # a lambda, on purpose

    print("What the standard library's pickle (ProcessPoolExecutor) does with them:")
    for label, obj in [("launch", launch), ("Projectile", Projectile), ("lambda", height), ("closure", to_feet)]:
        print(f"  {label:<10} {pickle_check(obj)}")

    with DatalayerExecutor(max_workers=2) as ex:
        print("\nA dataclass instance in, the same class out (the task prints in the kernel):")
        shots = list(ex.map(launch, [Projectile(angle, 20.0) for angle in (15, 30, 45, 60, 75)]))
        best = max(shots, key=lambda p: p.distance)
        print(f"  best: {best}")
        print(f"  isinstance(best, Projectile): {isinstance(best, Projectile)}")

        print("\nA lambda and a closure:")
        print("  peak heights (m):", [round(h, 2) for h in ex.map(height, shots)])
        print("  distances (ft):  ", [round(d, 1) for d in ex.map(to_feet, [p.distance for p in shots])])

        print("\nA class built and used remotely, by a lambda:")
        distance = ex.submit(lambda: Projectile(45, 30.0).fly().distance).result()
        print(f"  45 deg at 30 m/s -> {distance:.1f} m")
