/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The one record the BPF program writes to the ring buffer: struct event, a
 * header and a part per kind of detail. Python reads its layout from the
 * compiled object's BTF (otelproc/kernel/record.py) and the decoder uses
 * fields by their own names, whichever part holds them (r.cpu_ns is
 * usage.cpu_ns): a new field needs no mirror, and its name must not be one
 * another part uses. Enum values and bounds are not in BTF; record.py mirrors
 * the few it needs, checked by the tests.
 */
#ifndef __OTELPROC_H
#define __OTELPROC_H

#define TASK_COMM_LEN 16
#define CGROUP_NAME_MAX 128
#define EXE_MAX 512
#define ARGV_MAX 8192
#define ENV_MAX 16384
#define DATA_MAX (EXE_MAX + ARGV_MAX + ENV_MAX)

enum event_kind {
	EVENT_EXEC = 1,
	EVENT_FORK = 2,
	EVENT_EXIT = 3,
	EVENT_SIGNAL = 4,	/* a signal that may end it was sent to a tracked process */
	EVENT_OOM = 5,		/* the OOM killer chose a tracked process */
	EVENT_REGION = 6,	/* a tracked process created its span region (otelproc/region.py) */
};

/* How a process announces its span region: a thread of it takes the name
 * REGION_PREFIX followed by the region's fd in decimal (otelproc/region.py). */
#define REGION_PREFIX "otelproc-r"
#define REGION_PREFIX_LEN 10

enum event_flag {
	EVENT_F_EXE_CUT = 1,	/* exe longer than EXE_MAX - 1 bytes */
	EVENT_F_ARGV_CUT = 2,	/* argv longer than ARGV_MAX bytes */
	EVENT_F_ENV_CUT = 4,	/* environment longer than ENV_MAX bytes */
	EVENT_F_UNTRACKED = 8,	/* tracked map full: no fork or exit will follow */
	EVENT_F_SENDER_KERNEL = 16,	/* signal: the kernel sent it, not the process in sender_* */
	EVENT_F_OOM_MEMCG = 32,	/* oom: a memory cgroup's limit was hit (cgroup names it), not the system's */
	EVENT_F_USAGE_CUT = 64,	/* exit: usage may miss threads: more were listed than the probe adds up, or releases kept interrupting its reads */
};

/* Indexes of the per-CPU "lost" counters. */
enum lost_reason {
	LOST_RINGBUF = 0,	/* ring buffer full: a record was dropped */
	LOST_TRACKED_FULL = 1,	/* tracked map full: a process could not be tracked */
	LOST_UNATTENDED = 2,	/* nobody read past the limit: a new lifetime was not recorded */
	LOST_MAX = 3,
};

/* The one entry of the reader map: the reader stamps it at every read, and a
 * probe nobody reads (pinned, otelproc down) stops taking on new lifetimes
 * once it has been alone for longer than the limit. A map, not a const
 * volatile: a resumed probe takes the new otelproc's limit. */
struct reader {
	__u64 last_read_ns;		/* CLOCK_BOOTTIME of the reader's last read */
	__u64 unattended_limit_ns;	/* 0: record whether read or not */
};

/* What every record starts with: which process, when, and what kind of record. */
struct event_header {
	__u64 time_ns;		/* when it happened, CLOCK_BOOTTIME */
	__u64 start_time_ns;	/* process start, CLOCK_BOOTTIME */
	__u64 cgroup_id;	/* cgroup v2 id (kernfs node id) */
	__u32 kind;		/* enum event_kind */
	__u32 flags;		/* enum event_flag bits */
	__u32 pid;		/* tgid, numbered in the scope's pid namespace */
	__u32 ppid;		/* real parent's tgid, same numbering; 0 outside scope */
	__u32 tid;		/* exec: the thread that called it; else pid */
	__u32 vpid;		/* tgid in the process's own pid namespace */
	__u32 pidns;		/* inode of that namespace */
	__u32 uid;
	__u32 gid;
	__u32 exit_code;	/* exit: raw wait status (status << 8 | core 0x80 | signal) */
	__u16 exe_len;		/* exec: bytes of data used by exe, argv and env, in order */
	__u16 argv_len;
	__u16 env_len;
	__u16 reserved;
	char comm[TASK_COMM_LEN];
	char cgroup[CGROUP_NAME_MAX];	/* leaf name of the process's cgroup; oom with EVENT_F_OOM_MEMCG: the limited one */
};

/* exit: what the whole process (every thread) used, read at the group's exit */
struct event_usage {
	__u64 cpu_ns;		/* time on CPU (sum_exec_runtime) */
	__u64 utime_ns;		/* user and system time as the tick samples them: */
	__u64 stime_ns;		/* they split cpu_ns the way getrusage() does */
	__u64 maxrss_pages;	/* peak resident set size (getrusage ru_maxrss) */
	__u64 min_flt;		/* page faults served without I/O */
	__u64 maj_flt;		/* page faults that read from storage */
	__u64 nvcsw;		/* voluntary context switches */
	__u64 nivcsw;		/* involuntary context switches */
	__u64 read_bytes;	/* storage I/O it caused (/proc/<pid>/io) */
	__u64 write_bytes;
};

/* oom: the victim's memory as the OOM killer saw it, in pages (pgtables in bytes) */
struct event_oom {
	__u64 total_vm;
	__u64 anon_rss;
	__u64 file_rss;
	__u64 shmem_rss;
	__u64 pgtables_bytes;
	__s32 score_adj;	/* the victim's oom_score_adj */
};

/* signal: which one, why, and who sent it */
struct event_signal {
	__u32 signo;
	__s32 si_code;		/* SI_USER, SI_TKILL, SI_KERNEL, SEGV_MAPERR, ... */
	__u32 sender_pid;	/* tgid, scope numbering; 0 outside the scope or from the kernel */
	char sender_comm[TASK_COMM_LEN];
};

/* region: where the process keeps the spans it has not exported, for otelproc to open through /proc */
struct event_region {
	__s32 region_fd;	/* the region's descriptor (a memfd) in the process */
};

/* Every record is a header and the parts, each zeroed by its own sizeof
 * where the kind does not fill it; only exec records carry data[]. */
struct event {
	struct event_header header;
	struct event_usage usage;
	struct event_oom oom;
	struct event_signal signal;
	struct event_region region;
	char data[DATA_MAX];	/* exec only; fork, exit, signal, oom and region records end before it */
};

#define EXE_NAME_LEN 64

/* Key of the executable-name match list: an LPM trie over the name of the file
 * an exec loads. An exact name is stored with its NUL terminator so it cannot
 * match longer names; a name of EXE_NAME_LEN - 1 bytes or more is cut and has
 * no terminator where a listed name (at most EXE_NAME_LEN - 2 bytes) has one. */
struct exe_name_key {
	__u32 prefixlen;	/* in bits */
	char name[EXE_NAME_LEN];
};

#endif /* __OTELPROC_H */
