/* pause: the process that holds a pod's (or a compose project's) namespaces open, the stand-in for
 * registry.k8s.io/pause. As pid 1 of its pid namespace it reaps the orphans re-parented to it,
 * and a SIGINT or SIGTERM ends it at once. Built static (gcc -static), it is the image's only file. */
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>
#include <unistd.h>

static void reap(int sig)
{
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

static void stop(int sig)
{
	(void)sig;
	_exit(0);
}

int main(void)
{
	struct sigaction children = { .sa_handler = reap, .sa_flags = SA_NOCLDSTOP | SA_RESTART };
	struct sigaction end = { .sa_handler = stop };

	sigaction(SIGCHLD, &children, NULL);
	sigaction(SIGINT, &end, NULL);
	sigaction(SIGTERM, &end, NULL);
	for (;;)
		pause();
}
