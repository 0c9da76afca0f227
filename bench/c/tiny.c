/* The watched workload: a process that does nothing but start and exit, so that
 * the cost of tracing its exec and exit is as large a share of its life as it
 * can be (the worst case for the tracer). */
int main(void)
{
	return 0;
}
