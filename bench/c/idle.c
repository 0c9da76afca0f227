/* A process that stays: it waits for a signal and does nothing else, so that
 * thousands of them cost the machine little while otelproc tracks them all. */
#include <unistd.h>

int main(void)
{
	pause();
	return 0;
}
