import os
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The middle process stands in for the gateway: it starts a "trainer" that arms the parent-death
# signal, prints the trainer's pid, then waits to be killed.
MIDDLE = """
import os, subprocess, sys, time
env = dict(os.environ, CARRYON_PARENT_PID=str(os.getpid()))
child = subprocess.Popen([sys.executable, "-c",
    "from carryon_train.lifetime import die_with_parent; die_with_parent(); print('armed', flush=True); import time; time.sleep(120)"],
    env=env, stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "armed"
print(child.pid, flush=True)
time.sleep(120)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            return not any(line.startswith("State:") and "Z" in line for line in f)
    except FileNotFoundError:
        return False


@unittest.skipUnless(sys.platform.startswith("linux"), "parent-death signals are Linux's")
class DiesWithParentTest(unittest.TestCase):
    def test_trainer_dies_when_its_gateway_is_killed(self) -> None:
        env = dict(os.environ, PYTHONPATH=HERE)
        middle = subprocess.Popen([sys.executable, "-c", MIDDLE], env=env, stdout=subprocess.PIPE, text=True)
        try:
            trainer = int(middle.stdout.readline())
            self.assertTrue(alive(trainer))
            middle.kill()  # SIGKILL: no cleanup code runs in the "gateway"
            middle.wait()
            deadline = time.monotonic() + 10
            while alive(trainer) and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertFalse(alive(trainer), "the trainer outlived its gateway")
        finally:
            middle.kill()
            middle.wait()
            middle.stdout.close()

    def test_a_trainer_whose_gateway_is_already_gone_exits(self) -> None:
        env = dict(os.environ, PYTHONPATH=HERE, CARRYON_PARENT_PID="1")  # not our parent
        r = subprocess.run([sys.executable, "-c", "from carryon_train.lifetime import die_with_parent; die_with_parent(); print('ran')"],
                           env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 1)
        self.assertNotIn("ran", r.stdout)


if __name__ == "__main__":
    unittest.main()
