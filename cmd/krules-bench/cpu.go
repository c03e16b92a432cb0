package main

import (
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cpuSample is the CPU time used so far by this process and by the local
// nats-server and redis-server processes (found in /proc by name; zero when
// not on this machine or not Linux). Used by the nats and feed rows to
// print CPU per event, which machine load disturbs less than wall time.
type cpuSample struct{ self, nats, redis, postgres time.Duration }

// With several servers of a kind on the machine (other users' instances),
// counting every process of that name mixes their load in: these flags
// name the one process to count.
var (
	cpuNatsPid  = flag.Int("cpu-nats-pid", 0, "CPU per event: count only this nats-server process (default: every nats-server)")
	cpuRedisPid = flag.Int("cpu-redis-pid", 0, "CPU per event: count only this redis-server process (default: every redis-server)")
)

func takeCPU() cpuSample {
	var s cpuSample
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		s.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "stat"))
		if err != nil {
			continue
		}
		st := string(b)
		open, closing := strings.IndexByte(st, '('), strings.LastIndexByte(st, ')')
		if open < 0 || closing < open {
			continue
		}
		name := st[open+1 : closing]
		pid, _ := strconv.Atoi(filepath.Base(d))
		var dst *time.Duration
		switch {
		case name == "nats-server":
			if *cpuNatsPid != 0 && pid != *cpuNatsPid {
				continue
			}
			dst = &s.nats
		case strings.HasPrefix(name, "redis-server"):
			if *cpuRedisPid != 0 && pid != *cpuRedisPid {
				continue
			}
			dst = &s.redis
		case name == "postgres":
			dst = &s.postgres
		default:
			continue
		}
		f := strings.Fields(st[closing+1:])
		if len(f) < 15 {
			continue
		}
		// utime and stime (fields 14, 15), and cutime and cstime (16, 17):
		// the CPU of reaped children. A PostgreSQL backend that exits
		// between two samples moves its CPU from its own line to the
		// postmaster's children total, so the sum never goes down (it did
		// when only live processes were counted).
		var ticks int64
		for _, k := range []int{11, 12, 13, 14} {
			n, _ := strconv.ParseInt(f[k], 10, 64)
			ticks += n
		}
		*dst += time.Duration(ticks) * (time.Second / 100)
	}
	return s
}

func (s cpuSample) sub(o cpuSample) cpuSample {
	return cpuSample{s.self - o.self, s.nats - o.nats, s.redis - o.redis, s.postgres - o.postgres}
}

// perEvent formats the CPU per event of n events.
func (s cpuSample) perEvent(n int) string {
	us := func(d time.Duration) string {
		return strconv.FormatFloat(float64(d.Microseconds())/float64(n), 'f', 1, 64)
	}
	out := "cpu/event µs: self " + us(s.self) + " nats " + us(s.nats) + " redis " + us(s.redis)
	if s.postgres > 0 {
		out += " pg " + us(s.postgres)
	}
	return out
}
