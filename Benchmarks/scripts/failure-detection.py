#!/usr/bin/env python3
"""Failure detection and rejoin of real `kith serve` processes on loopback (issue 28, part 4).

Three nodes on 127.0.0.1. Prints `name: value` lines:

- detection: a node is stopped (SIGSTOP); the time until both others list it `dead`, over
  --trials trials (p50, p99, max), then it is continued and the time until all see it alive.
- false deaths: one node is stopped and continued --pauses times for 1 to 3 s each; the number of
  times any node declared any member dead (`kith_membership_members_down_total`) must stay 0.
- rejoin after a stop: a node is stopped for --partition seconds, then continued (one-sided: it
  never sees the others die); the time until every member sees every other alive.
- rejoin after a partition (--netns, as root): a fourth cluster whose third node runs in a network
  namespace of its own joined by a veth pair (addresses 10.213.0.1 and 10.213.0.2, this script's
  own test hosts); the link is taken down for --partition seconds, both sides declare the other
  dead, then it is brought up; the time until every member sees every other alive.

Usage: python3 Benchmarks/scripts/failure-detection.py [--kith .build/release/kith] [--trials 20]
Every process it starts is stopped by its id when it ends.
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

TOKEN = "fd-token"


class Node:
    def __init__(self, kith, directory, name, seeds, env, host="127.0.0.1", prefix=()):
        self.name = name
        self.host = host
        args = list(prefix) + [kith, "serve", "--data-dir", os.path.join(directory, name), "--http", f"{host}:0",
                               "--node-name", name, "--gossip", f"{host}:0", "--token", TOKEN]
        if seeds:
            args += ["--seeds", ",".join(seeds)]
        self.log = open(os.path.join(directory, name + ".log"), "w")
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, env=env, text=True)
        first = self.process.stdout.readline()
        second = self.process.stdout.readline()
        self.port = int(re.search(re.escape(host) + r":(\d+)", first).group(1))
        self.gossip = re.search("(" + re.escape(host) + r":\d+)", second).group(1)

    def get(self, path):
        request = urllib.request.Request(f"http://{self.host}:{self.port}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.read().decode()

    def statuses(self):
        members = json.loads(self.get("/v1/admin/members"))["members"]
        return {m["name"]: m["status"] for m in members}

    def members_down(self):
        text = self.get("/metrics")
        match = re.search(r"^kith_membership_members_down_total (\d+)", text, re.M)
        return int(match.group(1)) if match else 0

    def stop(self):
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def wait_until(condition, limit):
    """Seconds until `condition()` holds (polled every 20 ms), or None after `limit` seconds."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        try:
            if condition():
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.02)
    return None


def all_alive(nodes):
    return all(all(s == "alive" for s in n.statuses().values()) and len(n.statuses()) == len(nodes) for n in nodes)


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kith", default=".build/release/kith" if os.path.exists(".build/release/kith") else ".build/debug/kith")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--pauses", type=int, default=10)
    parser.add_argument("--partition", type=float, default=30)
    parser.add_argument("--netns", action="store_true", help="also a two-sided partition through a network namespace (root)")
    parser.add_argument("--only-netns", action="store_true", help="only the two-sided partition")
    arguments = parser.parse_args()

    directory = tempfile.mkdtemp(prefix="kith-fd-")
    with open(os.path.join(directory, "secret"), "wb") as secret:
        secret.write(os.urandom(32))
    env = dict(os.environ, KITH_CLUSTER_KEY=os.urandom(32).hex(), KITH_SECRET_FILE=os.path.join(directory, "secret"))
    nodes = []
    if arguments.only_netns:
        try:
            partition(arguments, directory, env)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        return
    try:
        nodes.append(Node(arguments.kith, directory, "n1", [], env))
        for name in ["n2", "n3"]:
            nodes.append(Node(arguments.kith, directory, name, [nodes[0].gossip], env))
        if wait_until(lambda: all_alive(nodes), 20) is None:
            sys.exit("the cluster did not form")

        detections, recoveries = [], []
        for trial in range(arguments.trials):
            victim = nodes[1 + trial % 2]
            others = [n for n in nodes if n is not victim]
            time.sleep(random.uniform(0, 1))  # not in step with the probe rounds
            os.kill(victim.process.pid, signal.SIGSTOP)
            seconds = wait_until(lambda: all(n.statuses().get(victim.name) == "dead" for n in others), 60)
            os.kill(victim.process.pid, signal.SIGCONT)
            if seconds is None:
                sys.exit(f"trial {trial}: {victim.name} was not declared dead within 60 s")
            detections.append(seconds)
            recovered = wait_until(lambda: all_alive(nodes), 60)
            recoveries.append(recovered if recovered is not None else 60)
        print(f"detection.trials: {len(detections)}")
        print(f"detection.p50_s: {percentile(detections, 50):.2f}")
        print(f"detection.p99_s: {percentile(detections, 99):.2f}")
        print(f"detection.max_s: {max(detections):.2f}")
        print(f"detection.back_alive_p50_s: {percentile(recoveries, 50):.2f}")

        wait_until(lambda: all_alive(nodes), 30)
        before = sum(n.members_down() for n in nodes)
        for pause in range(arguments.pauses):
            victim = nodes[1 + pause % 2]
            os.kill(victim.process.pid, signal.SIGSTOP)
            time.sleep(random.uniform(1, 3))
            os.kill(victim.process.pid, signal.SIGCONT)
            time.sleep(random.uniform(0.5, 2))
        wait_until(lambda: all_alive(nodes), 30)
        print(f"pauses.count: {arguments.pauses}")
        print(f"pauses.false_deaths: {sum(n.members_down() for n in nodes) - before}")

        # A one-sided cut: the victim stops answering for the partition, the others declare it
        # dead; when it continues, it must be seen alive again (it never saw the others die).
        victim = nodes[2]
        os.kill(victim.process.pid, signal.SIGSTOP)
        time.sleep(arguments.partition)
        os.kill(victim.process.pid, signal.SIGCONT)
        rejoin = wait_until(lambda: all_alive(nodes), 60)
        print(f"rejoin_after_stop.partition_s: {arguments.partition:.0f}")
        print(f"rejoin_after_stop.all_alive_s: {rejoin if rejoin is not None else float('nan'):.2f}")
        if arguments.netns:
            partition(arguments, directory, env)
    finally:
        for node in nodes:
            node.stop()
        shutil.rmtree(directory, ignore_errors=True)


NAMESPACE, ROOT_LINK, INNER_LINK = "kith-fd", "kith-fd0", "kith-fd1"


def run(*command):
    subprocess.run(command, check=True)


def partition(arguments, directory, env):
    """Both sides of a real partition declare the other dead; the time until all are alive after the heal."""
    run("ip", "netns", "add", NAMESPACE)
    nodes = []
    try:
        run("ip", "link", "add", ROOT_LINK, "type", "veth", "peer", "name", INNER_LINK)
        run("ip", "link", "set", INNER_LINK, "netns", NAMESPACE)
        run("ip", "addr", "add", "10.213.0.1/24", "dev", ROOT_LINK)
        run("ip", "link", "set", ROOT_LINK, "up")
        run("ip", "netns", "exec", NAMESPACE, "ip", "addr", "add", "10.213.0.2/24", "dev", INNER_LINK)
        run("ip", "netns", "exec", NAMESPACE, "ip", "link", "set", INNER_LINK, "up")
        run("ip", "netns", "exec", NAMESPACE, "ip", "link", "set", "lo", "up")
        nodes.append(Node(arguments.kith, directory, "p1", [], env, host="10.213.0.1"))
        nodes.append(Node(arguments.kith, directory, "p2", [nodes[0].gossip], env, host="10.213.0.1"))
        nodes.append(Node(arguments.kith, directory, "p3", [nodes[0].gossip], env, host="10.213.0.2",
                          prefix=("ip", "netns", "exec", NAMESPACE)))
        if wait_until(lambda: all_alive(nodes), 20) is None:
            sys.exit("the partition cluster did not form")
        run("ip", "link", "set", ROOT_LINK, "down")
        cut = wait_until(lambda: all(n.statuses().get("p3") == "dead" for n in nodes[:2]), 30)
        time.sleep(max(0, arguments.partition - (cut or 0)))
        run("ip", "link", "set", ROOT_LINK, "up")
        healed = wait_until(lambda: all_alive(nodes), 60)
        print(f"partition.seconds: {arguments.partition:.0f}")
        print(f"partition.declared_dead_s: {cut if cut is not None else float('nan'):.2f}")
        print(f"partition.rejoin_all_alive_s: {healed if healed is not None else float('nan'):.2f}")
    finally:
        for node in nodes:
            node.stop()
        subprocess.run(["ip", "link", "del", ROOT_LINK], check=False)
        subprocess.run(["ip", "netns", "del", NAMESPACE], check=False)


if __name__ == "__main__":
    main()
