/* The storm driver: ITERATIONS fork + execve + waitpid of PROGRAM.
 *
 *   storm ITERATIONS PROGRAM [JOBS [RATE]]
 *
 * JOBS workers (default 1) share the iterations; with RATE > 0 they are paced to
 * RATE lifetimes per second in all, else they go as fast as the machine lets them.
 * Prints one JSON line: the wall time from the first fork to the last reap, in
 * nanoseconds, and how many children did not exit 0.
 *
 * It is C, not Python, so that the driver's own cost per iteration is small and
 * stable next to what is measured (the tracer's cost per exec and exit).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sleep_until(long long deadline_ns)
{
	struct timespec ts = { deadline_ns / 1000000000LL, deadline_ns % 1000000000LL };

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

/* Runs `count` lifetimes; returns how many failed. Iteration i starts no earlier
 * than first_ns + i * period_ns when period_ns > 0. */
static long run_worker(long count, char *program, long long first_ns, long long period_ns)
{
	char *argv[] = { program, NULL };
	char *envp[] = { NULL };
	long failures = 0;

	for (long i = 0; i < count; i++) {
		if (period_ns > 0)
			sleep_until(first_ns + i * period_ns);
		pid_t pid = fork();
		if (pid < 0) {
			perror("storm: fork");
			return failures + (count - i);
		}
		if (pid == 0) {
			execve(program, argv, envp);
			_exit(127);
		}
		int status;
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			failures++;
	}
	return failures;
}

int main(int argc, char **argv)
{
	if (argc < 3 || argc > 5) {
		fprintf(stderr, "usage: %s ITERATIONS PROGRAM [JOBS [RATE]]\n", argv[0]);
		return 2;
	}
	long iterations = atol(argv[1]);
	char *program = argv[2];
	long jobs = argc > 3 ? atol(argv[3]) : 1;
	double rate = argc > 4 ? atof(argv[4]) : 0;
	if (iterations < 1 || jobs < 1 || jobs > iterations || rate < 0) {
		fprintf(stderr, "storm: ITERATIONS >= JOBS >= 1 and RATE >= 0\n");
		return 2;
	}
	long long period_ns = rate > 0 ? (long long)(jobs * 1e9 / rate) : 0;
	long long start = now_ns();
	long long first = start + 1000000; /* paced workers all begin 1 ms from now */
	for (long w = 0; w < jobs; w++) {
		long share = iterations / jobs + (w < iterations % jobs);
		pid_t pid = fork();
		if (pid < 0) {
			perror("storm: fork");
			return 1;
		}
		if (pid == 0) {
			long failed = run_worker(share, program, first + w * (period_ns / jobs), period_ns);
			_exit(failed > 255 ? 255 : (int)failed);
		}
	}
	long failures = 0;
	for (long w = 0; w < jobs; w++) {
		int status;
		if (wait(&status) < 0) {
			perror("storm: wait");
			return 1;
		}
		failures += WIFEXITED(status) ? WEXITSTATUS(status) : 1;
	}
	long long elapsed = now_ns() - start;
	printf("{\"elapsed_ns\": %lld, \"iterations\": %ld, \"jobs\": %ld, \"failures\": %ld}\n",
	       elapsed, iterations, jobs, failures);
	return failures ? 1 : 0;
}
