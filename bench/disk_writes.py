"""Bytes the service writes to disk in steady state, with its InfluxDB and MQTT outputs healthy (SD-card wear).

Run from the repository root (needs ``victoria-metrics`` and, for MQTT, ``mosquitto``)::

    python bench/disk_writes.py                  # 15 s warm-up, 180 s measured, then a 20 s outage as a control
    python bench/disk_writes.py --duration 600   # longer
    python bench/disk_writes.py --no-mqtt        # InfluxDB only
    sudo python bench/disk_writes.py --loop      # state directory on a fresh ext4 on a loop device (root)

``python -m appliance run`` runs as its own process, as systemd runs it: the built-in simulator (standard mode,
a frame every ~0.93 s, as a Linky), InfluxDB output to a local victoria-metrics, MQTT output (with Home
Assistant discovery) to a local mosquitto, multicast, health and control off, its state directory (where
spools would go) in a temporary directory on the same disk as the repository.

What is measured is the service process's ``write_bytes`` in ``/proc/<pid>/io``: the bytes of page cache it
dirtied for the block device (every thread; ``tmpfs`` excluded), minus ``cancelled_write_bytes``, the dirty bytes
it truncated or deleted before the kernel wrote them back: the difference is the data that reaches the disk.
Over ``--duration`` seconds after a warm-up, extrapolated to an hour.  The durable outputs write every frame
ahead to their spool (``appliance/outputs/spool.py``) and truncate it as soon as the server has the frame, so the
net is zero.  The service gets a ``$RUNTIME_DIRECTORY`` on a tmpfs (``/dev/shm``) as systemd gives it
``/run/teleinfo``, where those segments live (``--no-runtime-dir``: none, they go to the state directory).  The
log goes to standard error, which here is a pipe read by this script (under systemd it is the journal's
socket), so the log's bytes are counted apart and printed.  ``wchar``/``syscw`` (bytes and calls of ``write()``
on any file descriptor, tmpfs included; ``send()`` on sockets is not counted there) are shown for scale.  The
state directory is listed at the end (a spool's open, empty segment at most).

What ``/proc/<pid>/io`` cannot see is the file system's own writes: ext4 journals every change of a file's
size or time (jbd2 commits every 5 s).  ``--loop`` (root) puts the state directory on a fresh 256 MB ext4
(``mkfs.ext4`` defaults, mounted ``noatime`` as the SD-card image mounts its root) on a loop device and also
prints the bytes written to that device meanwhile: data, metadata and journal, what the card would see.

A control phase then stops victoria-metrics for ``--outage`` seconds: the spool must show up in ``write_bytes``,
which proves that the counter sees this process's file writes; the spool is then replayed and deleted.

Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(REPO) not in sys.path:  # `python bench/disk_writes.py` puts only bench/ on the path
    sys.path.insert(0, str(REPO))

from tests.servers import VictoriaMetrics  # noqa: E402
from tests.util import stop_process  # noqa: E402


def proc_io(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        k, v = line.split(":")
        out[k] = int(v)
    return out


class Service:
    """The service process; its standard error (the log) read by a thread and counted, never written to disk."""

    def __init__(self, config: Path, runtime: Path | None) -> None:
        drop = ("NOTIFY_SOCKET", "TELEINFO_CONFIG", "RUNTIME_DIRECTORY")
        env = {k: v for k, v in os.environ.items() if k not in drop}
        if runtime is not None:
            env["RUNTIME_DIRECTORY"] = str(runtime)  # as systemd's RuntimeDirectory= sets it
        env["PYTHONPATH"] = str(REPO)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance", "run", "--config", str(config), "--no-view"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=REPO,
            env=env,
        )
        self.lines: list[str] = []
        self.log_bytes = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.log_bytes += len(raw)
            self.lines.append(raw.decode(errors="replace").rstrip())

    def wait_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in list(self.lines)):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"service never logged {text!r}:\n" + "\n".join(self.lines))
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.proc)
        self._thread.join(5)


def config_text(state: Path, vm_port: int, mqtt_port: int | None) -> str:
    text = (
        '[source]\nkind = "simulator"\n[source.simulator]\nmode = "standard"\n'
        "[outputs.multicast]\nenabled = false\n"
        f'[outputs.influxdb]\nenabled = true\nurl = "http://127.0.0.1:{vm_port}"\n'
        "[health]\nenabled = false\n[control]\nenabled = false\n[web]\nenabled = false\n"
        f'[state]\ndirectory = "{state}"\n[logging]\nlevel = "info"\n'
    )
    if mqtt_port is not None:
        text += f'[outputs.mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {mqtt_port}\n'
    return text


def measure(pid: int, seconds: float, disk: LoopDisk | None = None) -> tuple[dict[str, int], float]:
    os.sync()  # what happened before is on the device: the window counts only its own writes
    a, t = proc_io(pid), time.monotonic()
    da = disk.written() if disk is not None else 0
    time.sleep(seconds)
    b = proc_io(pid)
    delta = {k: b[k] - a[k] for k in a}
    delta["device"] = disk.written() - da if disk is not None else 0
    return delta, time.monotonic() - t


def files(directory: Path) -> list[str]:
    return sorted(f"{p.relative_to(directory)} ({p.stat().st_size} B)" for p in directory.rglob("*") if p.is_file())


class LoopDisk:
    """A fresh ext4 on a loop device, mounted ``noatime``; :meth:`written` is the bytes written to the device."""

    def __init__(self, tmp: Path) -> None:
        self.image, self.mount = tmp / "disk.img", tmp / "disk"
        subprocess.run(["truncate", "-s", "256M", str(self.image)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(self.image)], check=True)
        self.device = subprocess.run(
            ["losetup", "--find", "--show", str(self.image)], capture_output=True, text=True, check=True
        ).stdout.strip()
        self.mount.mkdir()
        subprocess.run(["mount", "-o", "noatime", self.device, str(self.mount)], check=True)

    def written(self) -> int:
        fields = Path(f"/sys/block/{Path(self.device).name}/stat").read_text().split()
        return int(fields[6]) * 512  # sectors written

    def close(self) -> None:
        subprocess.run(["umount", str(self.mount)], check=False)
        subprocess.run(["losetup", "-d", self.device], check=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=180.0, help="seconds measured in steady state (180)")
    ap.add_argument("--warmup", type=float, default=15.0, help="seconds before measuring (15)")
    ap.add_argument("--outage", type=float, default=20.0, help="seconds of the control outage (0: none)")
    ap.add_argument("--no-mqtt", action="store_true", help="InfluxDB output only")
    ap.add_argument("--loop", action="store_true", help="state directory on an ext4 loop device (root): device bytes")
    ap.add_argument(
        "--no-runtime-dir", action="store_true", help="no $RUNTIME_DIRECTORY: the spools write ahead on the disk too"
    )
    args = ap.parse_args(argv)
    if args.loop and os.geteuid() != 0:
        raise SystemExit("--loop needs root (losetup, mount)")
    mqtt = not args.no_mqtt and (REPO / "tests" / "mosquitto.py").exists()

    with tempfile.TemporaryDirectory(prefix="bench-disk-", dir="/var/tmp") as tmp_s:
        tmp = Path(tmp_s)
        df = subprocess.run(["df", "--output=fstype", str(tmp)], capture_output=True, text=True).stdout
        fs = df.split()[-1] if df.split() else "?"
        disk = LoopDisk(tmp) if args.loop else None
        state = (disk.mount if disk is not None else tmp) / "state"
        if disk is not None:
            fs = f"ext4 on {disk.device} (noatime)"
        vm = VictoriaMetrics()
        vm.start(tmp)
        broker = sub = None
        svc = None
        runtime: Path | None = None
        try:
            if mqtt:
                from tests.mosquitto import Mosquitto, Subscriber

                broker = Mosquitto(tmp / "mosquitto").start()
                sub = Subscriber(broker.port, ["teleinfo/+/state"])
            config = tmp / "teleinfo.toml"
            config.write_text(config_text(state, vm.port, broker.port if broker else None))
            runtime = None
            if not args.no_runtime_dir:  # systemd's /run/teleinfo is a tmpfs: so is /dev/shm
                runtime = Path(tempfile.mkdtemp(prefix="bench-run-", dir="/dev/shm"))
            svc = Service(config, runtime)
            svc.wait_log("output influxdb up", 30)
            if broker is not None:
                svc.wait_log("output mqtt up", 30)
            time.sleep(args.warmup)
            log_before = svc.log_bytes
            states_before = len(sub.messages) if sub is not None else 0
            points_before = sum(len(v) for v in vm.samples('{__name__="teleinfo_east"}').values())
            delta, took = measure(svc.proc.pid, args.duration, disk)
            log_bytes = svc.log_bytes - log_before
            states = len(sub.messages) - states_before if sub is not None else 0
            east = vm.samples('{__name__="teleinfo_east"}')
            points = sum(len(v) for v in east.values()) - points_before
            failing = [line for line in svc.lines if "failing" in line]
            left = files(state) if state.exists() else []

            outage: dict[str, int] | None = None
            if args.outage > 0:
                vm.stop()
                outage, outage_took = measure(svc.proc.pid, args.outage, disk)
                vm.start(tmp)
                svc.wait_log("spool replayed", 60)
            left_after = files(state) if state.exists() else []
        finally:
            if svc is not None:
                svc.stop()
            if runtime is not None:
                shutil.rmtree(runtime, ignore_errors=True)
            if sub is not None:
                sub.close()
            if broker is not None:
                broker.stop()
            vm.stop()
            if disk is not None:
                disk.close()

    per_hour = 3600 / took
    print(f"python {platform.python_version()} on {platform.machine()}; state directory on {fs}")
    print(
        "write-ahead segments: "
        + ("in the state directory (no $RUNTIME_DIRECTORY)" if args.no_runtime_dir else "$RUNTIME_DIRECTORY, a tmpfs")
    )
    print(
        f"service: simulator (standard), outputs influxdb -> victoria-metrics"
        f"{' and mqtt -> mosquitto' if mqtt else ''}; measured {took:.0f} s after a {args.warmup:.0f} s warm-up"
    )
    print(f"frames written to victoria-metrics meanwhile: {points} ({points / took:.2f}/s)")
    if mqtt:
        print(f"MQTT states received by a subscriber meanwhile: {states} ({states / took:.2f}/s)")
    if failing:
        print("WARNING: an output failed during the measurement:", *failing, sep="\n  ")
    print()
    print(f"{'':30} {'measured':>12} {'per hour':>14}")
    net = delta["write_bytes"] - delta["cancelled_write_bytes"]
    print(f"{'write_bytes (dirtied)':30} {delta['write_bytes']:>12,} {delta['write_bytes'] * per_hour:>14,.0f}")
    print(f"{'cancelled_write_bytes':30} {delta['cancelled_write_bytes']:>12,} {'':>14}")
    print(f"{'net: data to the disk':30} {net:>12,} {net * per_hour:>14,.0f}")
    if args.loop:
        dev = delta["device"]
        print(f"{'device (data+metadata+journal)':30} {dev:>12,} {dev * per_hour:>14,.0f}")
    print(f"{'log on stderr (journal)':30} {log_bytes:>12,} {log_bytes * per_hour:>14,.0f}")
    print(f"{'wchar (write() bytes, any fd)':30} {delta['wchar']:>12,} {delta['wchar'] * per_hour:>14,.0f}")
    print(f"{'syscw (write calls)':30} {delta['syscw']:>12,} {delta['syscw'] * per_hour:>14,.0f}")
    print(f"files in the state directory after steady state: {left or 'none'}")
    if outage is not None:
        print()
        print(
            f"control: victoria-metrics stopped for {outage_took:.0f} s: write_bytes {outage['write_bytes']:,}"
            + (f", device {outage['device']:,}" if args.loop else "")
            + f" (the spool); replayed, files left: {left_after or 'none'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
