#!/usr/bin/env python3
"""durability.py N MODE : what making N small new files durable costs on this file system.

MODE: nosync (write temps, rename), syncfs2 (write temps, syncfs, rename, syncfs: the
agent's old commit), fdatasync (write temps with one fdatasync each, rename, syncfs).
4 writer threads, N/10 directories under /tmp/h4x-dur (removed first). Prints wall per
phase and the process's CPU. Mind ext4's recently-deleted inode search (bench/README.md):
compare modes in one sitting, in the order given.
"""
import os, sys, time, ctypes, threading, shutil
libc = ctypes.CDLL("libc.so.6", use_errno=True)
N = int(sys.argv[1]); mode = sys.argv[2]; T = 4
base = "/tmp/h4x-dur/t%d-%s" % (N, mode)
shutil.rmtree(base, ignore_errors=True); os.makedirs(base)
for d in range(N // 10): os.mkdir("%s/d%04d" % (base, d))
names = ["%s/d%04d/f%05d.txt" % (base, i // 10, i) for i in range(N)]
def work(part, sync):
    for n in part:
        fd = os.open(n + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, b"bench file %05d\nseed abcdef\n" % 1)
        if sync: os.fdatasync(fd)
        os.close(fd)
def ren(part):
    for n in part: os.rename(n + ".tmp", n)
def par(f, *a):
    ch = (N + T - 1) // T
    ts = [threading.Thread(target=f, args=(names[i*ch:(i+1)*ch],) + a) for i in range(T)]
    [t.start() for t in ts]; [t.join() for t in ts]
def syncfs():
    fd = os.open(base, os.O_RDONLY); libc.syncfs(fd); os.close(fd)
t0 = time.time(); c0 = os.times()
if mode == "syncfs2":
    par(work, False); t1=time.time(); syncfs(); t2=time.time(); par(ren); syncfs()
elif mode == "fdatasync":
    par(work, True); t1=time.time(); t2=t1; par(ren); syncfs()
elif mode == "nosync":
    par(work, False); t1=time.time(); t2=t1; par(ren)
t3 = time.time(); c1 = os.times()
print("%s N=%d write %.3f sync1 %.3f total %.3f cpu %.3f" % (mode, N, t1-t0, t2-t1, t3-t0, (c1.user-c0.user)+(c1.system-c0.system)))
