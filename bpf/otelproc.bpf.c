// SPDX-License-Identifier: GPL-2.0
/* Process exec, fork, exit, signal and OOM events for tracked processes, in one ring buffer.
 *
 * Reading kernel memory, one rule. A program's typed pointers (its tp_btf
 * arguments, bpf_get_current_task_btf()) have their members that are not
 * pointers read directly: task->pid, sender->flags. The verifier checks such
 * a load against BTF and makes it one that cannot fault, and vmlinux.h marks
 * its types preserve_access_index, so it is a CO-RE relocation all the same.
 * Everything else is read with BPF_CORE_READ (bpf_core_read for a block,
 * BPF_CORE_READ_STR_INTO or bpf_probe_read_kernel_str for a string):
 * - what lies behind a pointer member (task->signal->live): the verifier
 *   could follow it, but it types every pointer so loaded with lookups by
 *   name in the kernel's BTF; on 6.18 following them directly took this
 *   object twice as long to load;
 * - a pointer the verifier sees as a plain number: what BPF_CORE_READ
 *   returned, one held in a copy on the stack, one computed (container_of),
 *   one compared as a number;
 * - an array member at an index known only at run time: the verifier takes
 *   no variable offset into a typed pointer;
 * - anything in a function that may be given a pointer of either kind.
 * A member some kernels lack is read only under bpf_core_field_exists() (or a
 * check of its type's size or kind).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "otelproc.h"

#define MAX_PIDNS_DEPTH 8

/* Not in BTF: #defines of the kernel's (the same on every architecture this runs on). */
#define SIGNAL_GROUP_EXIT 0x00000004	/* include/linux/sched/signal.h */
#define PF_KTHREAD 0x00200000
#define SI_USER 0
#define SI_KERNEL 0x80
#define SI_QUEUE -1
#define SI_TKILL -6
#define SIGHUP 1
#define SIGINT 2
#define SIGQUIT 3
#define SIGILL 4
#define SIGTRAP 5
#define SIGABRT 6
#define SIGBUS 7
#define SIGFPE 8
#define SIGKILL 9
#define SIGSEGV 11
#define SIGTERM 15
#define SIGCHLD 17
#define SIGCONT 18
#define SIGSTOP 19
#define SIGTSTP 20
#define SIGTTIN 21
#define SIGTTOU 22
#define SIGURG 23
#define SIGWINCH 28
#define SIGSYS 31
#define SIG_BIT(sig) (1ULL << ((sig) & 63))
/* Reported whatever the process does with them: the usual ways to ask a process to stop, and
 * SIGABRT, which a server sends a worker it gives up on (gunicorn's timeout) and the worker
 * handles before it exits: its span names the abort, not the exit status that follows. */
#define STOP_REQUESTS (SIG_BIT(SIGTERM) | SIG_BIT(SIGINT) | SIG_BIT(SIGHUP) | SIG_BIT(SIGQUIT) | SIG_BIT(SIGABRT))
/* A fault the kernel raised in the process itself, often handled (faulthandler) then re-raised. */
#define FAULTS (SIG_BIT(SIGSEGV) | SIG_BIT(SIGBUS) | SIG_BIT(SIGILL) | SIG_BIT(SIGFPE) | SIG_BIT(SIGSYS) | SIG_BIT(SIGTRAP))
/* Signals whose default action is not to end the process. */
#define HARMLESS_BY_DEFAULT (SIG_BIT(SIGCHLD) | SIG_BIT(SIGCONT) | SIG_BIT(SIGSTOP) | SIG_BIT(SIGTSTP) | \
			     SIG_BIT(SIGTTIN) | SIG_BIT(SIGTTOU) | SIG_BIT(SIGURG) | SIG_BIT(SIGWINCH))

const volatile bool trace_all = false;		/* track every process, ignore otelproc_match */
const volatile __u32 scope_pidns = 0;		/* 0: host; else inode of the scope's pid namespace */
const volatile bool scope_cgroup = false;	/* only start tracking inside otelproc_scope[0] */
const volatile __u64 ns_per_tick = 10000000;	/* NSEC_PER_SEC / USER_HZ, as /proc/<pid>/stat */
const volatile __u64 wakeup_bytes = 0;		/* wake the reader only past this much unread; 0: always */

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 256);
	__type(key, struct exe_name_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} otelproc_match SEC(".maps");

/* pid (scope numbering) -> start time in clock ticks, which tells a reused pid apart */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u64);
} otelproc_track SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20);
} otelproc_ring SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LOST_MAX);
	__type(key, __u32);
	__type(value, __u64);
} otelproc_lost SEC(".maps");

/* An exec record is too large for the BPF stack; it is built here, then copied out at its used size. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event);
} otelproc_heap SEC(".maps");

/* A dying group's usage, added up here by sum_group_usage() before its exit record is reserved. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event_usage);
} otelproc_usage SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} otelproc_scope SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct reader);
} otelproc_reader SEC(".maps");

static __always_inline void count_lost(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&otelproc_lost, &reason);

	if (n)
		*n += 1;
}

/* Whether a new lifetime goes unrecorded, counted as lost, because nobody has
 * read the ring for longer than the limit: its exec then costs about what an
 * unmatched one does. Lifetimes already tracked began while someone read:
 * their execs and exits are still recorded, bounded by the tracked map. */
static __always_inline bool drop_unattended(void)
{
	__u32 zero = 0;
	struct reader *r = bpf_map_lookup_elem(&otelproc_reader, &zero);

	if (!r || !r->unattended_limit_ns || bpf_ktime_get_boot_ns() - r->last_read_ns <= r->unattended_limit_ns)
		return false;
	count_lost(LOST_UNATTENDED);
	return true;
}

/* A task's tgid as numbered in the scope's pid namespace; 0 when it is not visible there. */
static __always_inline __u32 scoped_tgid(struct task_struct *task)
{
	struct pid *pid;
	struct upid upid;
	__u32 level;

	if (!scope_pidns)
		return BPF_CORE_READ(task, tgid);

	/* A task has a number in its own namespace and in each ancestor; level 0 is the host's. */
	pid = BPF_CORE_READ(task, signal, pids[PIDTYPE_TGID]);
	level = BPF_CORE_READ(pid, level);
	for (__u32 i = 0; i < MAX_PIDNS_DEPTH; i++) {
		if (i > level)
			break;
		if (bpf_core_read(&upid, sizeof(upid), &pid->numbers[i]))
			break;
		if (BPF_CORE_READ(upid.ns, ns.inum) == scope_pidns)
			return upid.nr;
	}
	return 0;
}

/* Same unit as field 22 of /proc/<pid>/stat. The group leader's, as a thread has its own. */
static __always_inline __u64 start_ticks(struct task_struct *task)
{
	return BPF_CORE_READ(task, group_leader, start_boottime) / ns_per_tick;
}

static __always_inline bool is_tracked(__u32 pid, __u64 ticks)
{
	__u64 *known = bpf_map_lookup_elem(&otelproc_track, &pid);

	return known && *known == ticks;
}

static __always_inline bool track(__u32 pid, __u64 ticks)
{
	if (bpf_map_update_elem(&otelproc_track, &pid, &ticks, BPF_ANY)) {
		count_lost(LOST_TRACKED_FULL);
		return false;
	}
	return true;
}

/* bprm->file is the file the kernel loads (what /proc/<pid>/exe names): for a
 * #! script, its interpreter, symlinks resolved; not the name that was exec'd,
 * which is the comm. */
static __always_inline bool exe_name_matches(struct linux_binprm *bprm)
{
	struct exe_name_key key = { .prefixlen = EXE_NAME_LEN * 8 };

	bpf_probe_read_kernel_str(key.name, sizeof(key.name), BPF_CORE_READ(bprm, file, f_path.dentry, d_name.name));
	return bpf_map_lookup_elem(&otelproc_match, &key) != NULL;
}

static __always_inline bool in_cgroup_scope(void)
{
	return !scope_cgroup || bpf_current_task_under_cgroup(&otelproc_scope, 0) == 1;
}

/* The task's place in the memory controller's hierarchy; NULL on a kernel
 * built without it (the enum value must be checked before it is relocated).
 * 12 bounds the subsys[] index for the verifier: no kernel has more. */
static __always_inline struct cgroup_subsys_state *memory_css(struct task_struct *task)
{
	int memory;

	if (!bpf_core_enum_value_exists(enum cgroup_subsys_id, memory_cgrp_id))
		return NULL;
	memory = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
	if (memory < 0 || memory >= 12)
		return NULL;
	return BPF_CORE_READ(task, cgroups, subsys[memory]);
}

static __always_inline void fill_cgroup(struct event_header *h, struct task_struct *task)
{
	struct cgroup *cgrp = BPF_CORE_READ(task, cgroups, dfl_cgrp);
	struct kernfs_node *kn = BPF_CORE_READ(cgrp, kn);

	h->cgroup_id = BPF_CORE_READ(kn, id);
	/* On a cgroup v1 host every task sits in the v2 root; the memory
	 * controller's hierarchy then holds the container's name. */
	if (BPF_CORE_READ(cgrp, level) == 0) {
		struct cgroup_subsys_state *css = memory_css(task);

		if (css)
			kn = BPF_CORE_READ(css, cgroup, kn);
	}
	bpf_probe_read_kernel_str(h->cgroup, sizeof(h->cgroup), BPF_CORE_READ(kn, name));
}

/* Zeroes the fixed part of a record (all but data[]) part by part, each by
 * its own size: a member added to a part is zeroed with it, and a part added
 * to struct event fails the assertion below until it is zeroed here too. */
static __always_inline void zero_record(struct event *e)
{
	__builtin_memset(&e->header, 0, sizeof(e->header));
	__builtin_memset(&e->usage, 0, sizeof(e->usage));
	__builtin_memset(&e->oom, 0, sizeof(e->oom));
	__builtin_memset(&e->signal, 0, sizeof(e->signal));
	__builtin_memset(&e->region, 0, sizeof(e->region));
}
_Static_assert(__builtin_offsetof(struct event, data) == sizeof(struct event_header) + sizeof(struct event_usage) +
	       sizeof(struct event_oom) + sizeof(struct event_signal) + sizeof(struct event_region),
	       "zero_record() zeroes every byte of struct event before data[]");

/* A record of the whole process: every part zeroed, the header filled (who,
 * when, whose child, which credentials and cgroup). The exit's usage is for
 * the exit program to fill. */
static __always_inline void fill_header(struct event *e, struct task_struct *task, __u32 kind, __u32 pid)
{
	struct event_header *h = &e->header;
	struct task_struct *leader = BPF_CORE_READ(task, group_leader);
	struct pid *tgid = BPF_CORE_READ(task, signal, pids[PIDTYPE_TGID]);
	__u32 level = BPF_CORE_READ(tgid, level);
	struct upid own;

	zero_record(e);
	h->time_ns = bpf_ktime_get_boot_ns();
	h->start_time_ns = BPF_CORE_READ(leader, start_boottime);
	h->kind = kind;
	h->pid = pid;
	h->ppid = scoped_tgid(BPF_CORE_READ(task, real_parent));
	h->tid = pid;
	if (!bpf_core_read(&own, sizeof(own), &tgid->numbers[level])) {
		h->vpid = own.nr;
		h->pidns = BPF_CORE_READ(own.ns, ns.inum);
	}
	h->uid = BPF_CORE_READ(task, real_cred, uid.val);
	h->gid = BPF_CORE_READ(task, real_cred, gid.val);
	/* The leader's name is the process's (/proc/<pid>/comm); threads may name themselves. */
	BPF_CORE_READ_STR_INTO(&h->comm, leader, comm);
	fill_cgroup(h, task);
}

/* Copies [start, end) of the new program's memory to data[off...], at most max bytes. */
static __always_inline __u32 read_user_block(struct event *e, __u32 off, unsigned long start,
					     unsigned long end, __u32 max, __u32 cut_flag)
{
	__u64 len = end > start ? end - start : 0;

	if (len > max) {
		len = max;
		e->header.flags |= cut_flag;
	}
	if (off > DATA_MAX - max)
		return 0;
	if (bpf_probe_read_user(&e->data[off], len, (void *)start))
		return 0;
	return len;
}

/* Waking the reader for every record costs a context switch per event; with
 * wakeup_bytes set, records accumulate until that much is unread, and the
 * reader, which polls on a timer anyway, collects them in one go. Only the
 * record that takes the unread part past wakeup_bytes asks for a wake-up: a
 * reader that lags, or is not there at all (a pinned probe while otelproc is
 * down), is not asked again for each record, at some 20 us of the traced
 * process's time each. unread counts this record's size bytes. */
static __always_inline __u64 wakeup_flag(__u64 unread, __u64 size)
{
	if (!wakeup_bytes)
		return 0;
	return unread >= wakeup_bytes && unread - size < wakeup_bytes ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

/* Reserves a record without data[] (a fork, exit, signal or oom record):
 * only the fixed part goes out. The exec record, with its data[], is built in
 * otelproc_heap and copied out at its used size instead. */
static __always_inline struct event *reserve_without_data(void)
{
	struct event *e = bpf_ringbuf_reserve(&otelproc_ring, offsetof(struct event, data), 0);

	if (!e)
		count_lost(LOST_RINGBUF);
	return e;
}

/* Submits what reserve_without_data() reserved; a reserved record is already counted as unread. */
static __always_inline void submit_without_data(struct event *e)
{
	__u64 size = offsetof(struct event, data);

	bpf_ringbuf_submit(e, wakeup_flag(bpf_ringbuf_query(&otelproc_ring, BPF_RB_AVAIL_DATA), size));
}

/* Reserves a signal or OOM record, zeroed, with only whose and when filled
 * (kind, pid, start and event times, comm): the process's other details are
 * in its exec and fork records, and these come often enough to keep short. */
static __always_inline struct event *reserve_whose_when(struct task_struct *task, __u32 kind, __u32 pid)
{
	struct event *e = reserve_without_data();
	struct task_struct *leader = BPF_CORE_READ(task, group_leader);

	if (!e)
		return NULL;
	zero_record(e);
	e->header.time_ns = bpf_ktime_get_boot_ns();
	e->header.start_time_ns = BPF_CORE_READ(leader, start_boottime);
	e->header.kind = kind;
	e->header.pid = pid;
	e->header.tid = pid;
	BPF_CORE_READ_STR_INTO(&e->header.comm, leader, comm);
	return e;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(otelproc_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 pid = scoped_tgid(task), zero = 0, flags = 0, off;
	__u64 ticks = start_ticks(task), size, unread;
	struct mm_struct *mm;
	struct event *e;
	long n;

	if (!pid)
		return 0;
	/* Tracking is decided here, once, by the file the exec loaded; a later
	 * rename or exec keeps a process tracked. */
	if (!is_tracked(pid, ticks)) {
		if (!trace_all && !exe_name_matches(bprm))
			return 0;
		if (!in_cgroup_scope() || drop_unattended())
			return 0;
		if (!track(pid, ticks))
			flags = EVENT_F_UNTRACKED;
	}

	e = bpf_map_lookup_elem(&otelproc_heap, &zero);
	if (!e)
		return 0;
	fill_header(e, task, EVENT_EXEC, pid);
	e->header.flags = flags;
	/* Exec from a non-leader thread gives that thread the process's pid;
	 * old_pid is the thread's own id (host numbering). */
	if (old_pid != task->pid)
		e->header.tid = old_pid;

	/* interp is the file actually run: the interpreter for a #! script. */
	n = bpf_probe_read_kernel_str(e->data, EXE_MAX, BPF_CORE_READ(bprm, interp));
	off = n > 0 ? n : 0;
	if (off >= EXE_MAX)
		e->header.flags |= EVENT_F_EXE_CUT;
	if (off > EXE_MAX)
		off = EXE_MAX;
	e->header.exe_len = off;

	mm = BPF_CORE_READ(task, mm);
	e->header.argv_len = read_user_block(e, off, BPF_CORE_READ(mm, arg_start), BPF_CORE_READ(mm, arg_end),
					     ARGV_MAX, EVENT_F_ARGV_CUT);
	off += e->header.argv_len;
	e->header.env_len = read_user_block(e, off, BPF_CORE_READ(mm, env_start), BPF_CORE_READ(mm, env_end),
					    ENV_MAX, EVENT_F_ENV_CUT);
	off += e->header.env_len;
	if (off > DATA_MAX)
		return 0;
	size = offsetof(struct event, data) + off;
	unread = bpf_ringbuf_query(&otelproc_ring, BPF_RB_AVAIL_DATA) + size;
	if (bpf_ringbuf_output(&otelproc_ring, e, size, wakeup_flag(unread, size)))
		count_lost(LOST_RINGBUF);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(otelproc_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 pid, ppid;
	struct event *e;
	bool tracked_now;
	__u64 ticks;

	if (child->pid != child->tgid)
		return 0;	/* a new thread, not a process */

	if (trace_all) {
		if (!in_cgroup_scope())
			return 0;
	} else {
		ppid = scoped_tgid(parent);
		if (!ppid || !is_tracked(ppid, start_ticks(parent)))
			return 0;
	}
	pid = scoped_tgid(child);
	if (!pid || drop_unattended())
		return 0;
	ticks = start_ticks(child);

	/* Track first, report second: with the ring buffer full the fork record
	 * is lost, but the child is still tracked, so its exit is reported and
	 * the /proc sweep finds it in the map. */
	tracked_now = track(pid, ticks);
	e = reserve_without_data();
	if (!e)
		return 0;
	fill_header(e, child, EVENT_FORK, pid);
	if (!tracked_now)
		e->header.flags = EVENT_F_UNTRACKED;
	submit_without_data(e);
	return 0;
}

static __always_inline __u64 rss_pages(struct mm_struct *mm, int member)
{
	/* get_mm_counter(): the counter's shared count, not the per-CPU deltas, as the kernel reports it. */
	__s64 count = BPF_CORE_READ(mm, rss_stat[member & 3].count);

	return count > 0 ? count : 0;
}

/* The mm's high-water mark of resident pages, as get_mm_hiwater_rss(); 0 where unknown. */
static __always_inline __u64 mm_peak_pages(struct mm_struct *mm)
{
	__u64 rss, hiwater;

	/* Per-CPU counters since Linux 6.2; before, a struct of atomics (and this
	 * tracepoint came after exit_mm() until 6.16 anyway). Sizes, not a type
	 * name: a type missing from vmlinux sends libbpf looking through module
	 * BTF, which takes CAP_SYS_ADMIN. */
	if (!mm || bpf_core_field_size(mm->rss_stat) != 4 * bpf_core_type_size(struct percpu_counter))
		return 0;
	rss = rss_pages(mm, MM_FILEPAGES) + rss_pages(mm, MM_ANONPAGES) + rss_pages(mm, MM_SHMEMPAGES);
	hiwater = BPF_CORE_READ(mm, hiwater_rss);
	return hiwater > rss ? hiwater : rss;
}

/* Adds what a task used, as its own counters hold it, to the record's totals. */
static __always_inline void add_task_usage(struct event_usage *u, struct task_struct *t)
{
	u->cpu_ns += BPF_CORE_READ(t, se.sum_exec_runtime);
	u->utime_ns += BPF_CORE_READ(t, utime);
	u->stime_ns += BPF_CORE_READ(t, stime);
	u->min_flt += BPF_CORE_READ(t, min_flt);
	u->maj_flt += BPF_CORE_READ(t, maj_flt);
	u->nvcsw += BPF_CORE_READ(t, nvcsw);
	u->nivcsw += BPF_CORE_READ(t, nivcsw);
	if (bpf_core_field_exists(t->ioac.read_bytes)) {	/* CONFIG_TASK_IO_ACCOUNTING */
		u->read_bytes += BPF_CORE_READ(t, ioac.read_bytes);
		u->write_bytes += BPF_CORE_READ(t, ioac.write_bytes);
	}
}

/* signal->stats_lock's sequence, odd while a write section is open. It is
 * the first 4 bytes of seqlock_t on every kernel: seqlock_t begins with its
 * seqcount (a seqcount_spinlock_t since 5.10, a seqcount_t before), and that
 * with its unsigned sequence. */
static __always_inline __u32 stats_sequence(struct signal_struct *sig)
{
	__u32 seq = 1;

	bpf_core_read(&seq, sizeof(seq), &sig->stats_lock);
	return seq;
}

/* Threads on a group's list whose counters one read adds up, at most: so
 * many calls of add_listed_threads(), each adding up so many threads. */
#define USAGE_THREAD_CALLS 64
#define USAGE_THREADS_PER_CALL 16
/* Reads of a group's usage before it is reported as cut (EVENT_F_USAGE_CUT). */
#define USAGE_READS 4

static __always_inline struct event_usage *usage_sum(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&otelproc_usage, &zero);
}

/* Adds the counters of the threads on a group's list, from the one whose
 * task->thread_node is at node, to the sum in otelproc_usage: up to
 * USAGE_THREADS_PER_CALL of them, or to the list's end (head). Returns the
 * next node (head at the end; 0 if the list could not be read).
 *
 * This and read_group_usage() are global functions: the verifier checks each
 * once, where it checks a static one at every call, and a bounded loop once
 * per turn it may take. Thus one read of up to 1024 threads costs the load a
 * few thousand instructions to check, not tens of thousands. */
__attribute__((noinline)) __u64 add_listed_threads(__u64 node, __u64 head)
{
	struct event_usage *u = usage_sum();

	if (!u)
		return 0;
	for (int i = 0; i < USAGE_THREADS_PER_CALL && node && node != head; i++) {
		add_task_usage(u, (void *)node - bpf_core_field_offset(struct task_struct, thread_node));
		node = (__u64)BPF_CORE_READ((struct list_head *)node, next);
	}
	return node;
}

/* Sets the sum in otelproc_usage to signal_struct's totals plus the counters
 * of every thread on the group's list; returns whether that list ended within
 * USAGE_THREAD_CALLS * USAGE_THREADS_PER_CALL threads. */
__attribute__((noinline)) int read_group_usage(__u64 signal)
{
	struct signal_struct *sig = (void *)signal;
	struct event_usage *u = usage_sum();
	__u64 head = (__u64)&sig->thread_head, node;

	if (!u)
		return 0;
	__builtin_memset(u, 0, sizeof(*u));
	u->cpu_ns = BPF_CORE_READ(sig, sum_sched_runtime);
	u->utime_ns = BPF_CORE_READ(sig, utime);
	u->stime_ns = BPF_CORE_READ(sig, stime);
	u->min_flt = BPF_CORE_READ(sig, min_flt);
	u->maj_flt = BPF_CORE_READ(sig, maj_flt);
	u->nvcsw = BPF_CORE_READ(sig, nvcsw);
	u->nivcsw = BPF_CORE_READ(sig, nivcsw);
	if (bpf_core_field_exists(sig->ioac.read_bytes)) {
		u->read_bytes = BPF_CORE_READ(sig, ioac.read_bytes);
		u->write_bytes = BPF_CORE_READ(sig, ioac.write_bytes);
	}
	node = (__u64)BPF_CORE_READ(sig, thread_head.next);
	for (int i = 0; i < USAGE_THREAD_CALLS && node && node != head; i++)
		node = add_listed_threads(node, head);
	return node == head;
}

/* Adds up, in otelproc_usage, the whole group's usage as wait4() reports it
 * to the parent, read the way the kernel's own thread_group_cputime() reads
 * it. Returns false when the sum may miss threads.
 *
 * A thread's counters stay in its task_struct until the thread is released:
 * __exit_signal(), in the kernel's exit.c, then adds them to signal_struct's
 * totals and takes the thread off the group's list (signal->thread_head,
 * linked through task->thread_node, on every kernel since 3.14), both in one
 * write section of signal->stats_lock. Released threads are in the totals; the
 * others are on the list: this one, the leader until the group is reaped,
 * and the threads that died with this one, which are released only at the
 * end of their own exit (a traced one when its tracer reaps it), so that
 * some are still listed, their counters still their own, when the last
 * thread reaches this tracepoint. The totals plus the listed threads count
 * every thread once, provided no thread is released between reading the one
 * and walking the other: a sequence that was odd (a release under way) or
 * that moved meanwhile says one was, and the sum is read again.
 *
 * A thread's time on CPU since its last tick or switch is not in its
 * sum_exec_runtime yet; getrusage() leaves it out too, for every thread but
 * the caller. */
static __always_inline bool sum_group_usage(struct task_struct *task)
{
	struct signal_struct *sig = BPF_CORE_READ(task, signal);
	__u32 seq;

	for (int i = 0; i < USAGE_READS; i++) {
		seq = stats_sequence(sig);
		if (read_group_usage((__u64)sig) && !(seq & 1) && stats_sequence(sig) == seq)
			return true;
	}
	return false;
}

/* The exit record's usage: the sum sum_group_usage() left, and the peak memory. */
static __always_inline void fill_usage(struct event_usage *u, struct task_struct *task)
{
	struct event_usage *sum = usage_sum();

	if (sum)
		*u = *sum;
	/* Since Linux 6.16 this tracepoint comes before exit_mm(): the mm's own
	 * peak is that of the program run since the last exec. signal->maxrss
	 * (getrusage's ru_maxrss, set when the group dies, before this
	 * tracepoint) also counts the images before that exec, for a child of a
	 * large parent the parent's size. */
	u->maxrss_pages = mm_peak_pages(BPF_CORE_READ(task, mm));
	if (!u->maxrss_pages)
		u->maxrss_pages = BPF_CORE_READ(task, signal, maxrss);
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(otelproc_exit, struct task_struct *task)
{
	struct signal_struct *sig;
	struct event *e;
	bool whole;
	__u32 pid;

	/* This fires once per thread; the process is gone only with its last one. */
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	pid = scoped_tgid(task);
	if (!pid || !is_tracked(pid, start_ticks(task)))
		return 0;
	/* Threads exiting together can each see live == 0: the one that
	 * removes the entry reports the exit. */
	if (bpf_map_delete_elem(&otelproc_track, &pid))
		return 0;

	whole = sum_group_usage(task);	/* before the reservation, which holds up the reader */
	e = reserve_without_data();
	if (!e)
		return 0;
	fill_header(e, task, EVENT_EXIT, pid);
	/* The status wait() reports (wait_task_zombie): the group's when it
	 * exited as a group, else the leader's. The last thread's own code may
	 * differ: it can have called exit() itself while the group ended otherwise. */
	sig = BPF_CORE_READ(task, signal);
	if (BPF_CORE_READ(sig, flags) & SIGNAL_GROUP_EXIT)
		e->header.exit_code = BPF_CORE_READ(sig, group_exit_code);
	else
		e->header.exit_code = BPF_CORE_READ(task, group_leader, exit_code);
	fill_usage(&e->usage, task);
	if (!whole)
		e->header.flags |= EVENT_F_USAGE_CUT;
	submit_without_data(e);
	return 0;
}

/* si_code as the signal_generate tracepoint itself reports it: the kernel
 * passes two special pointer values instead of a siginfo. */
static __always_inline int signal_code(struct kernel_siginfo *info)
{
	unsigned long special = (unsigned long)info;

	if (special == 0)	/* SEND_SIG_NOINFO: as if by kill() from current */
		return SI_USER;
	if (special == 1)	/* SEND_SIG_PRIV: from the kernel */
		return SI_KERNEL;
	return BPF_CORE_READ(info, si_code);	/* info, compared as a number, is one to the verifier */
}

/* Whether a signal that cannot be harmless by default may end the process or
 * asks it to: worth a record. */
static __always_inline bool signal_matters(int sig, int code, struct task_struct *task)
{
	struct sighand_struct *sighand;
	void *handler;

	if (SIG_BIT(sig) & STOP_REQUESTS || sig == SIGKILL)
		return true;
	if (SIG_BIT(sig) & FAULTS && code > 0)
		return true;
	/* Any other signal ends the process only if it has no handler. */
	sighand = BPF_CORE_READ(task, sighand);
	if (bpf_core_read(&handler, sizeof(handler), &sighand->action[(sig - 1) & 63].sa.sa_handler))
		return false;
	return handler == NULL;	/* SIG_DFL */
}

/* Fires in the sender's context (current), for every signal on the machine. */
SEC("tp_btf/signal_generate")
int BPF_PROG(otelproc_signal, int sig, struct kernel_siginfo *info, struct task_struct *task, int group, int result)
{
	struct task_struct *sender;
	struct event *e;
	__u32 pid;
	int code;

	/* First what the arguments alone tell, SIGCHLD above all: the most frequent signal. */
	if (result != TRACE_SIGNAL_DELIVERED && result != TRACE_SIGNAL_LOSE_INFO)
		return 0;	/* ignored, or already pending: it changes nothing */
	if (sig < 1 || sig > 64 || SIG_BIT(sig) & HARMLESS_BY_DEFAULT)
		return 0;
	pid = scoped_tgid(task);
	if (!pid || !is_tracked(pid, start_ticks(task)))
		return 0;
	code = signal_code(info);
	if (!signal_matters(sig, code, task))
		return 0;

	e = reserve_whose_when(task, EVENT_SIGNAL, pid);
	if (!e)
		return 0;
	e->signal.signo = sig;
	e->signal.si_code = code;
	sender = bpf_get_current_task_btf();
	/* Only kill(), tgkill() and sigqueue() come from the process that runs
	 * now; timers, faults and the kernel's own kills raise signals from
	 * whatever context the kernel is in. */
	if ((code == SI_USER || code == SI_TKILL || code == SI_QUEUE) && !(sender->flags & PF_KTHREAD)) {
		e->signal.sender_pid = scoped_tgid(sender);
		BPF_CORE_READ_STR_INTO(&e->signal.sender_comm, sender, group_leader, comm);
	} else {
		e->header.flags = EVENT_F_SENDER_KERNEL;
	}
	submit_without_data(e);
	return 0;
}

/* The OOM killer does not say why it ran. A memory cgroup at its limit when
 * one of its members is chosen made it (its charge failed: usage + the charge
 * > max); when the system runs out, cgroups are as a rule below their limits. */
#define OOM_CHARGE_SLACK 512	/* pages: the largest charge that fails, a huge page */
#define MAX_MEMCG_DEPTH 8

static __always_inline struct mem_cgroup *memcg_at_limit(struct task_struct *task)
{
	struct cgroup_subsys_state *css = memory_css(task), *parent;
	struct mem_cgroup *memcg;

	for (int i = 0; i < MAX_MEMCG_DEPTH && css; i++) {
		parent = BPF_CORE_READ(css, parent);
		if (!parent)
			break;	/* the root has no limit */
		memcg = (void *)css - bpf_core_field_offset(struct mem_cgroup, css);
		if (BPF_CORE_READ(memcg, memory.usage.counter) + OOM_CHARGE_SLACK >= BPF_CORE_READ(memcg, memory.max))
			return memcg;
		css = parent;
	}
	return NULL;
}

/* The OOM killer has sent SIGKILL to its victim and now marks it. */
SEC("tp_btf/mark_victim")
int BPF_PROG(otelproc_oom, struct task_struct *task)
{
	struct mem_cgroup *memcg;
	struct mm_struct *mm;
	struct event *e;
	__u32 pid;

	pid = scoped_tgid(task);
	if (!pid || !is_tracked(pid, start_ticks(task)))
		return 0;

	e = reserve_whose_when(task, EVENT_OOM, pid);
	if (!e)
		return 0;
	/* mark_oom_victim() has just set oom_mm; task->mm is gone if the leader already exited. */
	mm = BPF_CORE_READ(task, signal, oom_mm);
	if (!mm)
		mm = BPF_CORE_READ(task, mm);
	if (mm) {
		e->oom.total_vm = BPF_CORE_READ(mm, total_vm);
		e->oom.anon_rss = rss_pages(mm, MM_ANONPAGES);
		e->oom.file_rss = rss_pages(mm, MM_FILEPAGES);
		e->oom.shmem_rss = rss_pages(mm, MM_SHMEMPAGES);
		e->oom.pgtables_bytes = BPF_CORE_READ(mm, pgtables_bytes.counter);
	}
	e->oom.score_adj = BPF_CORE_READ(task, signal, oom_score_adj);
	memcg = memcg_at_limit(task);
	if (memcg) {
		e->header.flags = EVENT_F_OOM_MEMCG;
		bpf_probe_read_kernel_str(e->header.cgroup, sizeof(e->header.cgroup), BPF_CORE_READ(memcg, css.cgroup, kn, name));
	}
	submit_without_data(e);
	return 0;
}

/* The fd a thread's new name announces (REGION_PREFIX, then 1 to 6 digits), or -1. */
static __always_inline int announced_fd(const char *comm)
{
	const char prefix[REGION_PREFIX_LEN + 1] = REGION_PREFIX;
	char name[TASK_COMM_LEN];
	int fd = 0, i;

	if (bpf_probe_read_kernel_str(name, sizeof(name), comm) < 0)
		return -1;
	for (i = 0; i < REGION_PREFIX_LEN; i++)
		if (name[i] != prefix[i])
			return -1;
	for (i = REGION_PREFIX_LEN; i < REGION_PREFIX_LEN + 6 && name[i] >= '0' && name[i] <= '9'; i++)
		fd = fd * 10 + name[i] - '0';
	return i > REGION_PREFIX_LEN && name[i & (TASK_COMM_LEN - 1)] == 0 ? fd : -1;
}

/* A tracked process announces its span region (a memfd) by a thread's name:
 * no system call an unprivileged process makes is traced more cheaply, and
 * this one is rare. otelproc must open the region through /proc before the
 * process can die, so this record wakes the reader at once. */
SEC("tp_btf/task_rename")
int BPF_PROG(otelproc_region, struct task_struct *task, const char *comm)
{
	struct event *e;
	__u32 pid;
	int fd;

	pid = scoped_tgid(task);
	if (!pid || !is_tracked(pid, start_ticks(task)))
		return 0;
	fd = announced_fd(comm);
	if (fd < 0)
		return 0;
	e = reserve_whose_when(task, EVENT_REGION, pid);
	if (!e)
		return 0;
	e->region.region_fd = fd;
	bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
