"""`ruvector broker`'s fault-injection channel: SIGUSR1 takes every broker
down, SIGUSR2 brings them back, and the data survives. Checked with kcat (an
independent client): a message produced before the outage; metadata requests
fail while down; after SIGUSR2 the message is still there and a new one can be
produced and read back."""
import signal
import subprocess

from faultlib import check, log, main, start_broker, wait_for

TOPIC = "ctl.vectors"


def kcat(args, input_bytes=None, timeout=30):
    return subprocess.run(["kcat"] + args, input=input_bytes, capture_output=True, timeout=timeout)


def run(env):
    broker, bootstrap = start_broker(env, "ctl", 2)
    out = env.path("broker.log")
    r = kcat(["-P", "-b", bootstrap, "-t", TOPIC, "-p", "0", "-K:"], b"k1:before\n")
    check(r.returncode == 0, f"kcat produce failed: {r.stderr}")

    broker.send_signal(signal.SIGUSR1)
    wait_for("'brokers down'", lambda: "brokers down" in open(out).read(), 10, alive=[broker])
    r = kcat(["-L", "-b", bootstrap, "-m", "3"], timeout=30)
    check(r.returncode != 0, f"metadata request succeeded while the brokers were down: {r.stdout[:200]}")
    log(f"kcat -L while down: exit {r.returncode}")

    broker.send_signal(signal.SIGUSR2)
    wait_for("'brokers up'", lambda: "brokers up" in open(out).read(), 10, alive=[broker])
    r = kcat(["-P", "-b", bootstrap, "-t", TOPIC, "-p", "0", "-K:"], b"k2:after\n")
    check(r.returncode == 0, f"kcat produce after SIGUSR2 failed: {r.stderr}")
    r = kcat(["-C", "-b", bootstrap, "-t", TOPIC, "-p", "0", "-o", "beginning", "-e", "-q", "-f", "%k=%s\n"])
    check(r.returncode == 0, f"kcat consume failed: {r.stderr}")
    check(r.stdout.decode().split() == ["k1=before", "k2=after"], f"topic holds {r.stdout!r}")
    check(env.stop(broker) == 0, "broker did not exit 0 on SIGTERM")


if __name__ == "__main__":
    main(run)
